"""Search efficiency: how much of a full grid's compute each tuning method needs to come within
5% of the grid's best val CER, replayed over one recorded grid (analysis.replay).

The grid (benchmarks/jobs/crnn_grid.yaml: 36 crnn_ctc configurations x 8 epochs on the demo
corpus, every trial run to the end) is recorded once into benchmarks/data/crnn_grid.csv (per
epoch: the configuration, val CER and the epoch's wall seconds). Each method then replays those
curves with 2 trials at a time, as the recorded search ran, once per seed:

- ASHA + TPE (HyperOpt), ASHA + random, random (FIFO), the grid in a random order (FIFO): Ray
  Tune's own schedulers and our searchers (tune_jobs.registry), exactly as a real search;
- promotion ASHA + TPE, + random: our pause-and-resume scheduler (tune_jobs.schedulers), a
  resumed trial paying only the epochs it had not run;
- the peer: Optuna's TPE sampler with its Hyperband pruner (ask/tell; ``pip install optuna``,
  the ``bench`` extra: a benchmark-only dependency).

Printed: the median share of the grid's compute needed and its 95% interval over the repeats.

    .venv/bin/python benchmarks/search_efficiency.py [--repeats 20]
    .venv/bin/python benchmarks/search_efficiency.py --record      # about 25 minutes on 2 CPUs
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
JOB = ROOT / "jobs" / "crnn_grid.yaml"
DATA = Path(__import__("os").environ.get("CURVES", ROOT / "data" / "crnn_grid.csv"))


def record(storage: str) -> None:
    """Run the grid with speechtune itself, then keep its curves (small) in the repository."""
    from analysis.replay import Curves

    subprocess.run([sys.executable, "-m", "tune_jobs.cli", "tune", str(JOB), "--storage", storage], check=True)
    curves = Curves.from_experiment(Path(storage) / "crnn_grid")
    curves.to_csv(DATA)
    print(f"recorded {len(curves.configs)} configurations x {curves.epochs} epochs -> {DATA}")


def shuffled(curves, seed: int):
    """The same curves in a random order: the grid searcher runs them in recorded order."""
    order = np.random.default_rng(seed).permutation(len(curves.configs))
    return replace(curves, configs=tuple(curves.configs[i] for i in order), values=curves.values[order],
                   seconds=curves.seconds[order])


class OptunaPolicy:
    """Optuna's TPE sampler and Hyperband pruner behind the replay's searcher/scheduler calls."""

    def __init__(self, curves, seed: int):
        import optuna
        from ray.tune.schedulers import TrialScheduler

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.curves, self.levels = curves, curves.levels()
        self.study = optuna.create_study(
            study_name=f"replay-{seed}",  # Hyperband assigns brackets by a hash of the name: fixed per seed
            direction="minimize" if curves.mode == "min" else "maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=curves.epochs, reduction_factor=3))
        self.trials, self.told = {}, set()
        self.searcher, self.scheduler = self, self
        self.CONTINUE, self.STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP

    # searcher
    def suggest(self, trial_id: str) -> dict:
        from tune_jobs.searchers import NS

        t = self.study.ask()
        self.trials[trial_id] = t
        return {NS: {p: t.suggest_categorical(p, v) for p, v in self.levels.items()}}

    def on_trial_result(self, *args):  # both roles; the scheduler call decides
        if len(args) == 2:
            return None
        _, trial, result = args
        t = self.trials[trial.trial_id]
        t.report(result[self.curves.metric], step=result["training_iteration"])
        if t.should_prune():
            import optuna

            self.study.tell(t, state=optuna.trial.TrialState.PRUNED)
            self.told.add(trial.trial_id)
            return self.STOP
        return self.CONTINUE

    def on_trial_complete(self, *args, **kw):
        if len(args) < 3:  # the searcher's call
            return
        _, trial, result = args
        if trial.trial_id not in self.told:
            self.study.tell(self.trials[trial.trial_id], result[self.curves.metric])
            self.told.add(trial.trial_id)

    # scheduler
    def on_trial_add(self, ctl, trial) -> None:
        pass

    def choose_trial_to_run(self, ctl):
        return next((t for t in ctl.get_trials() if t.status == "PENDING"), None)

    def index(self, config: dict) -> int:
        from tune_jobs.searchers import NS

        return self.curves.index(config[NS])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true", help="run the grid and rewrite benchmarks/data/crnn_grid.csv")
    ap.add_argument("--storage", default="experiments", help="where --record keeps the experiment")
    ap.add_argument("--repeats", type=int, default=20, help="replays per method (seeds 0..N-1)")
    ap.add_argument("--max-trials", type=int, default=108,
                    help="trials a sampling method may start (the grid runs each configuration once)")
    a = ap.parse_args()
    import tune_jobs  # noqa: F401

    from analysis.replay import Curves, format_table, replay, summarize

    if a.record:
        record(a.storage)
    logging.getLogger("ray.tune.search.hyperopt").setLevel(logging.ERROR)
    curves = Curves.from_csv(DATA)
    t0 = time.time()
    methods = {
        "ASHA + TPE (HyperOpt)": lambda s: replay(curves, "asha", "hyperopt", seed=s, max_trials=a.max_trials),
        "ASHA + random": lambda s: replay(curves, "asha", "random", seed=s, max_trials=a.max_trials),
        "promotion ASHA + TPE (ours)": lambda s: replay(curves, "promotion", "hyperopt", seed=s,
                                                        max_trials=a.max_trials),
        "promotion ASHA + random (ours)": lambda s: replay(curves, "promotion", "random", seed=s,
                                                           max_trials=a.max_trials),
        "random (FIFO)": lambda s: replay(curves, "fifo", "random", seed=s, max_trials=a.max_trials),
        "grid, random order (FIFO)": lambda s: replay(shuffled(curves, s), "fifo", "grid", seed=s),
        "Optuna TPE + Hyperband (peer)": lambda s: replay(curves, "optuna", "tpe", seed=s, max_trials=a.max_trials,
                                                          policy=OptunaPolicy(curves, s)),
    }
    rows = []
    for name, run in methods.items():
        runs = [run(s) for s in range(a.repeats)]
        rows.append({"scheduler": name, "searcher": "", **summarize(runs, curves)})
        print(f"  {name}: {a.repeats} replays", file=sys.stderr)
    print(format_table(curves, rows))
    share = {r["scheduler"]: r["share_to_target"][0] for r in rows}
    reached = {r["scheduler"]: r["reached"] for r in rows}

    def said(name: str) -> str:
        v = share[name]
        return f"{100 * v:.0f}%" if v == v and v != float("inf") else \
            f"not reached in most repeats ({reached[name]}/{a.repeats} did)"

    ours, peer = share["ASHA + TPE (HyperOpt)"], share["Optuna TPE + Hyperband (peer)"]
    ratio = f"{ours / peer:.2f}" if 0 < peer < float("inf") and ours < float("inf") else "n/a"
    print(f"\nshare of the grid's compute to come within 5% of its best (median): ASHA + TPE "
          f"{said('ASHA + TPE (HyperOpt)')} (goal <= 20%); Optuna TPE + Hyperband {said('Optuna TPE + Hyperband (peer)')}; "
          f"random {said('random (FIFO)')}; the grid in a random order {said('grid, random order (FIFO)')}; "
          f"ratio ours/peer {ratio}  ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
