"""``python -m infinidepth``: the ``infinidepth`` command."""

import sys

from infinidepth.cli import main

sys.exit(main())
