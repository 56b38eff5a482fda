"""Experiments: job specs, search spaces, searchers, schedulers, the runner and the CLI.

Train/Tune integration. We run each trial as ``Tuner(TorchTrainer)`` (Ray Train's integrated
path), where Tune reserves ONE placement group per trial holding the trainer and all of its DDP
worker bundles, and removes that group when the scheduler stops the trial. Resources of a
stopped trial are therefore released by construction before the next trial is placed.

Train V2 (``RAY_TRAIN_V2_ENABLED=1``, the default in Ray 2.60) instead starts a
``TrainController`` inside the trial and lets the controller create its own worker placement
group outside Tune's accounting. When ASHA stops a trial, Tune kills the trial actor; the
controller dies with it but its placement group outlives it until a detached
``PlacementGroupCleaner`` notices through the State API. Meanwhile Tune, believing the CPUs
free, starts the next trial, whose controller waits for workers that cannot be placed ("timed
out after 60.0 seconds waiting for 2 workers"; ray-project/ray #54305, #65443). A longer
timeout only hides this. ``tests/test_tune_asha.py`` proves the integrated path never waits.
"""
import os

# Must be set before ray.train is imported anywhere in this process; workers get it through
# the runtime environment set in cluster.local.init_ray.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
