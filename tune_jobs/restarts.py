"""A restarted trial starts from the checkpoints that are there, and says what was not.

Tune restarts a trial (``--resume``, a retry after a failure) from the latest checkpoint its
state names, and refuses one that is no longer on storage ("Could not recover from checkpoint
as it does not exist on storage anymore", ``Trainable.restore``): the trial fails each retry
the same way and can never finish (issue 25: every checkpoint of a trial deleted between an
interrupt and ``--resume``). Ray has no option for this. The callback below runs as the trial's
actor starts, before Tune schedules the restore (``TuneController._actor_started``), and points
the trial at the newest checkpoint Tune kept for it that is still there, or at none: the trial
then starts again from epoch 1. Either way a warning names what is gone. A checkpoint that is
there but broken (truncated) is the worker's to skip (``asr_core.train.checkpoint.restore_intact``);
its note comes with the trial's first report (``restore_note``: worker logs reach no driver,
``cluster.local.init_ray``), and the same callback prints it.
"""
from __future__ import annotations

import logging

from ray.tune import Callback

log = logging.getLogger(__name__)


def _exists(checkpoint) -> bool:
    import pyarrow.fs as pafs

    return checkpoint.filesystem.get_file_info(checkpoint.path).type != pafs.FileType.NotFound


class RestartFromIntact(Callback):
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        latest = trial.latest_checkpoint_result
        if latest is None or _exists(latest.checkpoint):
            return
        # Tune's own record of the trial's checkpoints (``ray.train._internal.checkpoint_manager``,
        # private, Ray pinned to 2.60): no public call drops a checkpoint from it
        manager = trial.run_metadata.checkpoint_manager
        kept = [r for r in manager._checkpoint_results if r is not latest and _exists(r.checkpoint)]
        newest = max(kept, key=lambda r: r.metrics.get("training_iteration", 0), default=None)
        manager._checkpoint_results = kept
        manager._latest_checkpoint_result = newest
        if trial._restore_checkpoint_result is latest:  # a trial made to start from it (Trial's own fallback)
            trial._restore_checkpoint_result = None
        if newest is None:
            log.warning("%s: its checkpoint %s is gone from storage and no other is left: the trial starts "
                        "again from epoch 1", trial, latest.checkpoint.path)
        else:
            log.warning("%s: its checkpoint %s is gone from storage: resumed from %s", trial,
                        latest.checkpoint.path, newest.checkpoint.path)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("restore_note"):
            log.warning("%s: %s", trial, result["restore_note"])
