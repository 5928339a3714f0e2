"""The demo model against its grid baseline over several training seeds (issue 7).

Each input is a report of ``benchmarks/demo_model.py`` for one training seed, with the same data,
steps and architecture. Prints, per metric, each seed's implicit and grid scores and their
difference, then the mean difference and on how many seeds the implicit model is ahead:

    python benchmarks/demo_model_seeds.py benchmarks/results/demo_model_e192.json \\
        benchmarks/results/demo_model_e192_s1.json benchmarks/results/demo_model_e192_s2.json \\
        --json benchmarks/results/demo_model_seeds.json

Retraining moves every score; a margin that keeps its sign on every seed is one the architecture
earns, not one seed's luck.

Reports of heads trained on frozen encoders (``demo_model.py --encoder-from``) are summarised the
same way, one per encoder; they may share a seed, and are not mixed with end-to-end runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_report  # noqa: E402

# (region, metric, True when higher is better)
METRICS = [("full", "abs_rel", False), ("full", "delta_1.25", True), ("hf", "abs_rel", False), ("hf", "delta_1.25", True)]
SAME = ("train_scenes", "val_scenes", "steps", "pairs", "encoder", "patch", "head", "lr_decoder", "evaluated_at")


def load(path: str) -> dict:
    report = json.loads(Path(path).read_text())
    names = list(report["models"])
    grid = [n for n in names if n.startswith("grid-")]
    implicit = [n for n in names if not n.startswith("grid-")]
    if len(grid) != 1 or len(implicit) != 1:
        raise SystemExit(f"{path}: expected one implicit and one grid model, found {names}")
    # reports written before the seed was recorded ran with demo_model.py's default, 0
    return {"path": path, "report": report, "seed": report.get("seed", 0), "encoder_from": report.get("encoder_from"),
            "implicit": report["models"][implicit[0]]["summary"],
            "grid": report["models"][grid[0]]["summary"]}


def summarise(runs: list[dict]) -> dict:
    first = runs[0]["report"]
    seeds = [r["seed"] for r in runs]
    frozen = [r["encoder_from"] is not None for r in runs]
    if any(frozen) and not all(frozen):
        raise SystemExit("these reports mix heads trained on frozen encoders (--encoder-from) with end-to-end runs")
    keys = [(r["seed"], r["encoder_from"]) for r in runs]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"training seeds {seeds}: each report must come from another seed (or, frozen, another encoder)")
    for run in runs[1:]:
        differ = [k for k in SAME if run["report"].get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"{run['path']} differs from {runs[0]['path']} in {', '.join(differ)}: not the same experiment")
    rows = []
    for region, metric, higher in METRICS:
        diffs = [r["implicit"][region][metric] - r["grid"][region][metric] for r in runs]
        rows.append({
            "region": region, "metric": metric, "higher_is_better": higher,
            "implicit": [r["implicit"][region][metric] for r in runs],
            "grid": [r["grid"][region][metric] for r in runs],
            "implicit_minus_grid": diffs,
            "mean_difference": statistics.fmean(diffs),
            "seeds_implicit_ahead": sum((d > 0) == higher and d != 0 for d in diffs),
        })
    return {"benchmark": "demo model vs grid baseline over training seeds", "seeds": len(runs), "training_seeds": seeds,
            "encoders_from": [r["encoder_from"] for r in runs] if any(frozen) else None,
            "reports": [r["path"] for r in runs], **{k: first.get(k) for k in SAME}, "rows": rows}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="demo_model.py reports, one per training seed")
    ap.add_argument("--json")
    args = ap.parse_args()
    summary = summarise([load(p) for p in args.reports])
    print(f"{summary['seeds']} training seeds {summary['training_seeds']}, {summary['steps']} steps, {summary['pairs']} pairs per image")
    for k, encoder in enumerate(summary["encoders_from"] or []):
        print(f"  run {k}: heads on the frozen encoder of {encoder}")
    print(f"{'metric':16s} {'implicit':>24s} {'grid':>24s} {'mean diff':>10s} {'implicit ahead':>15s}")
    for r in summary["rows"]:
        fmt = lambda xs: " ".join(f"{x:.3f}" for x in xs)  # noqa: E731
        print(f"{r['region'] + ' ' + r['metric']:16s} {fmt(r['implicit']):>24s} {fmt(r['grid']):>24s} "
              f"{r['mean_difference']:+10.3f} {r['seeds_implicit_ahead']:>9d} of {summary['seeds']}")
    write_report(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
