"""Keeps every report of a restarted trial.

Tune's JSON and CSV loggers start a restored trial (a retry after a failure, a PBT exploit)
by copying its ``result.json`` and ``progress.csv`` back from the storage copy
(``LoggerCallback._restore_from_remote``) over the driver's own files. The storage copy lags
the driver's by up to the sync period, so the reports made between the last sync and the
failure vanished: seen in CI, a retried trial's history read epochs 1, 3, 4, ... after it was
restored from epoch 2. Ray has no option for this; the callback below runs before those loggers
(Tune appends its default loggers after the run's callbacks) and first copies the driver's
files up, so the restore brings back every report.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ray.air.constants import EXPR_PROGRESS_FILE, EXPR_RESULT_FILE
from ray.tune import Callback

log = logging.getLogger(__name__)


class KeepTrialLogs(Callback):
    FILES = (EXPR_RESULT_FILE, EXPR_PROGRESS_FILE)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if not trial.checkpoint:  # a fresh start: the loggers restore nothing
            return
        import pyarrow.fs

        storage = trial.storage
        for name in self.FILES:
            local = Path(trial.local_path, name)
            remote = Path(storage.trial_fs_path, name).as_posix()
            if not local.is_file() or local.stat().st_size == 0:
                continue  # a resumed experiment's new driver has none: storage's copy is all there is
            fs = storage.storage_filesystem
            if isinstance(fs, pyarrow.fs.LocalFileSystem) and Path(remote).resolve() == local.resolve():
                continue
            try:
                pyarrow.fs.copy_files(local.as_posix(), remote, destination_filesystem=fs)
            except Exception as e:  # the restore then brings back the older copy, as Tune alone would
                log.warning("%s: could not copy %s to storage before the restart (%s); reports since the "
                            "last sync may be missing from it", trial, name, e)
