"""The command line explains itself: every option of every subcommand has help text."""
from __future__ import annotations

import argparse
import subprocess
import sys


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for act in parser._actions:
        if isinstance(act, argparse._SubParsersAction):
            for name, sub in act.choices.items():
                missing += _undocumented(sub, f"{path} {name}")
        elif not isinstance(act, argparse._HelpAction) and not (act.help or "").strip():
            missing.append(f"{path}: {'/'.join(act.option_strings) or act.dest}")
    return missing


def test_every_option_of_every_subcommand_has_help():
    from tune_jobs.cli import build_parser

    parser = build_parser()
    assert _undocumented(parser, "speechtune") == []
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"tune", "train", "evaluate", "report", "data", "submit", "cluster", "jobs"} <= set(subs.choices)
    for name in ("train", "tune"):  # GPU runs are asked for on the command line too
        opts = {o for a in subs.choices[name]._actions for o in a.option_strings}
        assert {"--workers", "--gpus-per-worker"} <= opts, name
    # and the installed command prints it
    out = subprocess.run([sys.executable, "-m", "tune_jobs.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--gpus-per-worker" in out.stdout and "GPUs each worker holds" in out.stdout


def test_installed_versions_equal_the_lock():
    """`make install` installs requirements.lock; what is installed is what it pins."""
    from pathlib import Path

    from tune_jobs.lockcheck import mismatches, pinned

    lock = Path(__file__).resolve().parents[1] / "requirements.lock"
    pins = pinned(lock)
    assert {"torch", "torchaudio", "ray", "rich", "mlflow-skinny"} <= set(pins) and len(pins) > 100
    assert mismatches(lock) == []
