"""``python -m infinidepth.train --config FILE [--resume] [--out DIR]`` (what torchrun runs)."""

import sys

from infinidepth.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
