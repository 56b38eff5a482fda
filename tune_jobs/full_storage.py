"""A search whose storage fills up stops as an interrupt does, and says what it needs.

When a checkpoint no longer fits, Ray fails the trial ("[Errno 28] No space left on device"
while persisting it), retries it and the other trials into the same wall, and at the end
cannot build its results (the errors' own files are empty: ``EOFError: Ran out of input``).
Tune passes a failure's exception to no callback, and its error files are what cannot be
written, so the callback below looks at the storage itself when a trial fails: with less room
than one checkpoint of this search, it removes the checkpoint the failed write cut short (so
that Tune's state has room), stops the search the way Ctrl-C does (Tune's own SIGINT handler:
trials stay resumable, Tune's state is saved) and records the shortfall;
``runner.run_tune`` then raises ``StorageFull``, which names the path, the bytes free and the
bytes a checkpoint needs, and says that ``--resume`` continues once there is room. Local
storage only: object storage reports no free space (it fails the trial as before).
"""
from __future__ import annotations

import json
import logging
import shutil
import signal
from pathlib import Path

from ray.tune import Callback

log = logging.getLogger(__name__)

MIN_CHECKPOINT = 2 ** 20  # bytes: the room asked for before any checkpoint of the search recorded its size
SEEN: list[tuple[str, int, int]] = []  # (experiment path, bytes free, bytes needed), in this driver


class StorageFull(RuntimeError):
    def __init__(self, exp: str, free: int, needed: int):
        self.exp, self.free, self.needed = exp, free, needed
        super().__init__(f"{exp}: the storage is full: {free:,} bytes free, a checkpoint of this search needs "
                         f"{needed:,} bytes. The search stopped as at an interrupt; Tune's state is saved. "
                         f"Free space there, then resume with: speechtune tune --resume {exp}")


def checkpoint_bytes(exp: Path) -> int:
    """The largest ``state.pt`` a checkpoint of the experiment recorded (its meta.json), plus
    that meta.json; ``MIN_CHECKPOINT`` when none did."""
    sizes = []
    for meta in exp.glob("*/checkpoint_*/meta.json"):
        try:
            sizes.append(int(json.loads(meta.read_text())["state"]["bytes"]) + meta.stat().st_size)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(sizes, default=MIN_CHECKPOINT)


def shortfall(exp: Path) -> tuple[int, int] | None:
    """(bytes free, bytes needed) when the storage of experiment ``exp`` cannot hold one more
    checkpoint of it, else None."""
    try:
        free = shutil.disk_usage(exp).free
    except OSError:  # not on this machine (a driver beside the storage, not on it): nothing to tell
        return None
    needed = checkpoint_bytes(exp)
    return (free, needed) if free < needed else None


def raise_if_seen() -> None:
    if SEEN:
        exp, free, needed = SEEN[-1]
        raise StorageFull(exp, free, needed)


def _remove_partial_checkpoints(trial) -> None:
    """Remove what the failed write left of a checkpoint: a ``checkpoint_*`` folder of ``trial``
    whose ``state.pt`` or ``meta.json`` is missing or short, and which Tune never registered (it
    registers a checkpoint once it is written whole; a retry writes the same folder again). Its
    room is what Tune's own state then needs: its final save at the stop otherwise fails too, and
    left a stale searcher state (a resumed search then made a trial more than planned; seen on a
    loaded machine)."""
    from asr_core.train.checkpoint import BrokenCheckpoint, verify

    manager = trial.run_metadata.checkpoint_manager
    known = {r.checkpoint.path for r in manager.best_checkpoint_results}  # (``_CheckpointManager``, Ray 2.60)
    known |= {trial.checkpoint.path} if trial.checkpoint else set()
    for folder in Path(trial.storage.trial_fs_path).glob("checkpoint_*"):
        if str(folder) in known:
            continue
        try:
            verify(folder)  # the check a resume makes: state.pt there, at the size and checksum meta.json recorded
        except BrokenCheckpoint:
            shutil.rmtree(folder, ignore_errors=True)
            log.error("%s: removed %s, a checkpoint the full storage cut short (Tune never registered it)",
                      trial, folder)


class StopWhenStorageIsFull(Callback):
    def _check(self, trial) -> None:
        import pyarrow.fs as pafs

        if SEEN or not isinstance(trial.storage.storage_filesystem, pafs.LocalFileSystem):
            return
        exp = Path(trial.storage.experiment_fs_path)
        short = shortfall(exp)
        if short is None:
            return
        SEEN.append((str(exp), *short))
        log.error("%s failed and %s has %s bytes free, less than a checkpoint (%s bytes): the search stops "
                  "as at an interrupt", trial, exp, f"{short[0]:,}", f"{short[1]:,}")
        _remove_partial_checkpoints(trial)
        signal.raise_signal(signal.SIGINT)  # Tune's handler: the search ends after this step, resumable

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._check(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._check(trial)
