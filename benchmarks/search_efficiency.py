"""Search efficiency: how close each tuning method gets to a recorded grid's best for a share of
the grid's compute, replayed over full grids of our own families (tune_jobs.replay), side by side
with every peer.

Tables (benchmarks/data/<name>.csv, each recorded with speechtune itself: ``--record JOB``):
- crnn_grid: 36 crnn_ctc configurations x 8 epochs under a cosine schedule (jobs/crnn_grid.yaml)
- wavenet_grid: 24 wavenet_ctc configurations x 8 epochs under noam warm-up (jobs/wavenet_grid.yaml)
- seq2seq_grid: 24 seq2seq (LSTM attention) configurations x 8 epochs under Adam + ReduceLROnPlateau
  (jobs/seq2seq_grid.yaml): val CER above 100% until the attention aligns
``CURVES=path`` runs one table of the same columns instead.

Each method replays each table once per seed at 2 and at 8 parallel workers, on the replay's
clock (an epoch takes its recorded seconds; a paused trial resumed pays only the epochs it had
not run), starting at most 3 times as many trials as there are recorded configurations:
- ours: promotion ASHA (tune_jobs.schedulers; its defaults: grace 1, eta 3, rungs cut once their
  rank agreement with the final values is >= 0.8) + our random searcher, the job default for the
  ASR families; ours-rung_tpe: the same scheduler with rung_tpe (tune_jobs.rung_tpe);
- Ray's ASHA + TPE (HyperOpt), ASHA + random, asynchronous Hyperband, median stopping, random,
  the grid in a random order: Ray Tune's schedulers and searchers as a real search makes them
  (tune_jobs.registry);
- peers (benchmarks/peers.py; the ``bench`` extra): Ray's TuneBOHB + HyperBandForBOHB, Optuna 5
  TPE + Hyperband pruner, syne-tune 0.13's promotion ASHA, MOBSTER, Hyper-Tune, DyHPO and BOHB.
  A peer that does not import is left out, and the output says so.

Measured per table, method and worker count: the normalized regret of what the search would
return at 10%, 25% and 50% of the grid's compute (analysis.replay.normalized_regret: its
incumbent scored by its final value; 0 = the grid's best, 1 = a median configuration), as the
interquartile mean over the seeds with a 95% bootstrap interval; how many repeats came within 5%
of the grid's best, and the median compute those needed.

    .venv/bin/python benchmarks/search_efficiency.py [--seeds 30] [--json OUT] [--plot OUT.png]
    .venv/bin/python benchmarks/search_efficiency.py --methods ours --agreement 0.3   # the bar's sweep
    .venv/bin/python benchmarks/search_efficiency.py --record benchmarks/jobs/wavenet_grid.yaml
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
FRACTIONS = (0.1, 0.25, 0.5)
WORKERS = (2, 8)


@dataclass(frozen=True)
class Method:
    scheduler: str = ""  # a registry scheduler and searcher (ours and Ray's), or
    searcher: str = ""
    options: dict = field(default_factory=dict)
    peer: str = ""       # a benchmarks.peers policy: "optuna", "bohb" or a syne-tune name
    needs: tuple = ()    # the modules that peer imports
    ours: bool = False


def _methods() -> dict[str, Method]:
    from benchmarks.peers import SYNETUNE

    return {
        # the job default for the ASR families (tune_jobs.registry.DEFAULT_METHOD): promotion ASHA
        # with our random searcher (no repeats); ours-rung_tpe: the same scheduler with rung_tpe (on
        # grids this small TPE has little to learn from before the space runs out)
        "ours": Method("promotion", "random", ours=True),
        "ours-rung_tpe": Method("promotion", "rung_tpe", ours=True),
        "ray-asha-tpe": Method("asha", "hyperopt"),
        "ray-asha-random": Method("asha", "random"),
        "ray-hyperband": Method("hyperband", "random"),
        "ray-median": Method("median", "random"),
        "random": Method("fifo", "random"),
        "grid": Method("fifo", "grid"),
        "ray-bohb": Method(peer="bohb", needs=("hpbandster", "ConfigSpace")),
        "optuna-tpe-hyperband": Method(peer="optuna", needs=("optuna",)),
        **{n: Method(peer=n, needs=("syne_tune",)) for n in SYNETUNE},
    }


def record(job: Path, storage: str) -> Path:
    """Run a grid job with speechtune itself (every trial to the end), keep its curves (small)."""
    from analysis.replay import Curves
    from tune_jobs.spec import load_job

    name = load_job(job).name
    subprocess.run([sys.executable, "-m", "tune_jobs.cli", "tune", str(job), "--storage", storage], check=True)
    curves = Curves.from_experiment(Path(storage) / name)
    out = ROOT / "data" / f"{name}.csv"
    curves.to_csv(out)
    print(f"recorded {len(curves.configs)} configurations x {curves.epochs} epochs -> {out}")
    return out


def shuffled(curves, seed: int):
    """The same curves in a random order: the grid searcher runs them in recorded order."""
    order = np.random.default_rng(seed).permutation(len(curves.configs))
    return replace(curves, configs=tuple(curves.configs[i] for i in order), values=curves.values[order],
                   seconds=curves.seconds[order])


def run_one(curves, name: str, m: Method, seed: int, slots: int):
    """One replay; returns it with the curves it ran on (the grid's are reordered)."""
    import random

    from tune_jobs.replay import replay

    # Ray's asynchronous Hyperband picks brackets, and hpbandster samples its KDEs, from the
    # global generators: seeded per replay, so a rerun gives the same table
    np.random.seed(seed)
    random.seed(seed)
    limit = 3 * len(curves.configs)
    if name == "grid":
        c = shuffled(curves, seed)
        return replay(c, "fifo", "grid", seed=seed, slots=slots), c
    if m.peer:
        from benchmarks import peers

        pol = (peers.OptunaPolicy(curves, seed) if m.peer == "optuna" else
               peers.BOHBPolicy(curves, seed, slots) if m.peer == "bohb" else
               peers.SyneTunePolicy(curves, seed, m.peer))
        return replay(curves, name, name, seed=seed, slots=slots, max_trials=limit, policy=pol), curves
    return replay(curves, m.scheduler, m.searcher, seed=seed, slots=slots, max_trials=limit,
                  options=m.options or None), curves


def measure(curves, name: str, m: Method, seeds: int, slots: int) -> dict:
    from analysis.replay import compute_to_reach, iqm_interval, normalized_regret

    runs = [run_one(curves, name, m, s, slots) for s in range(seeds)]
    reach = [compute_to_reach(r, c) for r, c in runs]
    hit = [x for x in reach if math.isfinite(x)]
    curve = [float(np.mean([normalized_regret(r, c, f) for r, c in runs])) for f in np.linspace(0.02, 1, 50)]
    return {"regret": {str(f): list(iqm_interval([normalized_regret(r, c, f) for r, c in runs])) for f in FRACTIONS},
            "reached": len(hit), "repeats": seeds, "compute_to_reach": float(np.median(hit)) if hit else None,
            "ours": m.ours, "mean_regret_curve": curve}


def tables() -> dict[str, Path]:
    if os.environ.get("CURVES"):
        p = Path(os.environ["CURVES"])
        return {p.stem: p}
    return {p.stem: p for p in sorted((ROOT / "data").glob("*.csv"))}


def format_rows(name: str, curves, rows: dict) -> str:
    from analysis.replay import result_values

    # each configuration's run to the end (its best epoch), in the metric's own sign
    res = result_values(curves) * (1 if curves.mode == "min" else -1)
    best = np.nanmin(res) if curves.mode == "min" else np.nanmax(res)
    lines = [f"### {name}: {len(curves.configs)} configurations x {curves.epochs} epochs, "
             f"{curves.total_seconds():.0f} trial-seconds; {curves.metric} of a full run: best "
             f"{best:.4f}, median {np.nanmedian(res):.4f}",
             "", "| method | workers | regret at 10% | at 25% | at 50% | within 5% | compute to reach (median) |",
             "|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        method, w = key.rsplit("@", 1)
        cells = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in (r["regret"][str(f)] for f in FRACTIONS)]
        ctr = f"{100 * r['compute_to_reach']:.0f}%" if r["compute_to_reach"] is not None else "not reached"
        lines.append(f"| {'**' + method + '**' if r['ours'] else method} | {w} | " + " | ".join(cells)
                     + f" | {r['reached']}/{r['repeats']} | {ctr} |")
    return "\n".join(lines)


def plot(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.linspace(0.02, 1, 50)
    fig, axes = plt.subplots(len(results), len(WORKERS), figsize=(12, 4.2 * len(results)), squeeze=False)
    for i, (table, rows) in enumerate(results.items()):
        for j, w in enumerate(WORKERS):
            ax = axes[i][j]
            for key, r in rows.items():
                method, kw = key.rsplit("@", 1)
                if int(kw) != w:
                    continue
                ax.plot(xs, r["mean_regret_curve"], lw=2.5 if r["ours"] else 1.1, label=method,
                        color="black" if r["ours"] else None, ls="--" if r["ours"] and method != "ours" else "-")
            ax.set(title=f"{table}, {w} workers", xlabel="share of the grid's compute",
                   ylabel="normalized regret (mean over seeds)", ylim=(0, 1.5))
            ax.axvline(0.25, color="grey", lw=0.5)
            ax.axvline(0.5, color="grey", lw=0.5)
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"plot -> {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", type=Path, metavar="JOB", help="run this grid job and write benchmarks/data/<name>.csv")
    ap.add_argument("--storage", default="experiments", help="where --record keeps the experiment")
    ap.add_argument("--seeds", type=int, default=30, help="replays per method, table and worker count")
    ap.add_argument("--methods", default="", help="comma-separated subset (default: all that import)")
    ap.add_argument("--workers", default=",".join(map(str, WORKERS)))
    ap.add_argument("--agreement", type=float, help="our methods' rank-agreement bar for a rung to cut "
                    "(promotion ASHA's `agreement`; default 0.8; -1: every rung cuts, as in the paper)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--plot", type=Path, help="write the regret-against-compute plot here (PNG)")
    a = ap.parse_args()
    if a.record:
        record(a.record, a.storage)
    import tune_jobs  # noqa: F401

    from analysis.replay import Curves

    logging.getLogger("ray.tune.search.hyperopt").setLevel(logging.ERROR)
    methods = _methods()
    if a.methods:
        methods = {k: methods[k] for k in a.methods.split(",")}
    if a.agreement is not None:
        methods = {k: replace(m, options={**m.options, "agreement": a.agreement}) if m.ours else m
                   for k, m in methods.items()}
    left_out = {k: m.needs for k, m in methods.items() if any(importlib.util.find_spec(n) is None for n in m.needs)}
    for k, needs in left_out.items():
        print(f"left out: {k} ({' or '.join(needs)} does not import here: pip install -e '.[bench]')")
        del methods[k]
    workers = [int(w) for w in a.workers.split(",")]
    results: dict[str, dict] = {}
    t0 = time.time()
    for table, path in tables().items():
        curves = Curves.from_csv(path)
        rows = results.setdefault(table, {})
        for w in workers:
            for name, m in methods.items():
                t = time.time()
                rows[f"{name}@{w}"] = measure(curves, name, m, a.seeds, w)
                print(f"  {table} {name}@{w}: {a.seeds} replays, {time.time() - t:.0f} s", file=sys.stderr)
        print(format_rows(table, curves, rows), "\n")
    print(f"normalized regret: IQM [95% bootstrap interval] over {a.seeds} seeds ({time.time() - t0:.0f} s)")
    if a.json:
        a.json.write_text(json.dumps({t: {k: {x: v for x, v in r.items() if x != "mean_regret_curve"}
                                          for k, r in rows.items()} for t, rows in results.items()}, indent=1))
        print(f"json -> {a.json}")
    if a.plot:
        plot(a.plot, results)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT.parent))  # benchmarks.peers, run as a script
    sys.exit(main())
