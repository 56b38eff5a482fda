"""Loading a large experiment: ours (load_experiment, and the whole report) against Ray's
ExperimentAnalysis on the same directory, side by side in one run.

    .venv/bin/python benchmarks/report_load.py [--trials 1000] [--epochs 50] [--repeats 3]

The experiment is synthetic (analysis.synthetic: Tune's layout, Ray's own trial state) so that
1,000 trials x 50 epochs take seconds to write, not hours to train. Each repeat runs both, in
alternating order; the medians are printed with their ratio.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ours_load(exp: Path) -> int:
    from analysis.load import load_experiment

    trials, history = load_experiment(exp)
    return len(trials)


def ours_report(exp: Path, out: Path) -> int:
    from analysis.report import write_report

    write_report(exp, out)
    return 1


def ray_load(exp: Path) -> int:
    from ray.tune import ExperimentAnalysis

    ea = ExperimentAnalysis(str(exp), default_metric="val_cer", default_mode="min")
    df = ea.dataframe(metric="val_cer", mode="min")  # best result per trial, as our trials table
    _ = ea.trial_dataframes  # every report, as our history table
    return len(df)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from analysis.synthetic import random_experiment
    import ray.tune  # noqa: F401  (imports are not what is timed)
    import analysis.report  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.ensemble  # noqa: F401

    tmp = Path(tempfile.mkdtemp(prefix="speechtune-bench-"))
    t0 = time.perf_counter()
    exp = random_experiment(tmp / "synthetic", a.trials, a.epochs, stop_early=False)
    print(f"wrote {a.trials} trials x {a.epochs} epochs in {time.perf_counter() - t0:.1f} s: {exp}", flush=True)
    times: dict[str, list[float]] = {"ours_load": [], "ours_report": [], "ray": []}
    for r in range(a.repeats):
        order = ["ours_load", "ray", "ours_report"] if r % 2 == 0 else ["ray", "ours_report", "ours_load"]
        for name in order:
            t = time.perf_counter()
            n = {"ours_load": lambda: ours_load(exp), "ray": lambda: ray_load(exp),
                 "ours_report": lambda: ours_report(exp, tmp / f"report{r}")}[name]()
            times[name].append(time.perf_counter() - t)
            print(f"  repeat {r + 1}/{a.repeats} {name:12s} {times[name][-1]:7.2f} s ({n})", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{a.trials} trials x {a.epochs} epochs, median of {a.repeats}:")
    print(f"  Ray ExperimentAnalysis (trials + every report):  {med['ray']:7.2f} s")
    print(f"  ours, load_experiment (trials + history tables): {med['ours_load']:7.2f} s   "
          f"ratio Ray/ours {med['ray'] / med['ours_load']:.2f}")
    print(f"  ours, whole report (tables, findings, plots, md, html, parquet): {med['ours_report']:7.2f} s   "
          f"ratio Ray/ours {med['ray'] / med['ours_report']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
