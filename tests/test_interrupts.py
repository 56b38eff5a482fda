"""Nothing lost, nothing faked: Ctrl-C during a search, its resumption, reports written again, and a
truncated result.json, on the demo's smoke profile run by real `speechtune` processes."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

import pytest

from analysis.load import load_experiment, tune_last_results, tune_statuses
from analysis.raycheck import compare_with_ray
from tests.factories import TRAIN_WORKER, edited_job, ray_processes, speechtune, wait_while_running

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.ray  # every test here starts Ray (a process, a cluster)


@pytest.mark.timeout(600)
def test_interrupt_resume_and_reports_that_keep_what_tune_learned(cache_dir, tmp_path, caplog, capsys, monkeypatch,
                                                                 ray_cluster):
    import psutil

    # the demo's smoke profile with 4 epochs and no early stop: once Tune's state names a trial's
    # second checkpoint, 2 epochs of it remain, so the search is still running when it is frozen below
    demo = edited_job(ROOT / "tune_jobs" / "jobs" / "demo.yaml", tmp_path / "demo.yaml",
                      {"profiles.smoke.params.epochs": 4, "profiles.smoke.scheduler.max_t": 4,
                       "profiles.smoke.scheduler.grace_period": 4})
    # the 2 best and the latest: a trial's first two checkpoints are both kept (2 keeps one when
    # the latest is the best), for the truncation below
    demo.write_text(demo.read_text() + "keep_checkpoints: 3\n")
    exp = tmp_path / "exp" / "demo"
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "1", "SPEECHTUNE_CACHE": str(cache_dir)}
    p = speechtune("tune", str(demo), "--profile", "smoke", "--storage", str(tmp_path / "exp"),
                   "--address", ray_cluster.address, env=env)
    # the training workers are frozen (SIGSTOP) once Tune's state names a checkpoint of both running
    # trials, the second of one, while the live view is read and Ctrl-C is sent, so that no epoch,
    # and no end of the search, can overtake the test
    workers: list = []

    def frozen_mid_search() -> bool:
        running = {d for d, s in tune_statuses(exp).items() if s == "RUNNING"}
        saved = [r.get("checkpoint_dir_name") or "" for d, r in tune_last_results(exp).items() if d in running]
        if len(saved) < 2 or not all(saved) or max(saved) < "checkpoint_000001":
            return False
        workers[:] = ray_processes(ray_cluster.pid, TRAIN_WORKER)  # this head's: this search's
        for w in workers:
            w.suspend()
        return bool(workers)  # none between two trials: wait for the next

    wait_while_running(p, frozen_mid_search, 300, "a trial's first checkpoint while its worker runs", poll=0.05)
    try:
        assert workers and p.poll() is None, "the search ended before it could be interrupted"
        # the live view of the running search: every trial so far, its status and the job's metric
        from tune_jobs.cli import main

        monkeypatch.setenv("COLUMNS", "200")
        capsys.readouterr()
        assert main(["watch", str(exp), "--once"]) == 0
        view = capsys.readouterr().out
        assert "val_cer now" in view and "of 2" in view, view
        # every trial Tune has written its parameters for (a directory created a moment ago may
        # not have them yet: that trial is not listed until it does, seen in a fresh-clone run)
        for tdir in (d.parent for d in exp.glob("TorchTrainer_*/params.json")):
            tid = tdir.name.split("_")[1]
            line = next((l for l in view.splitlines() if tid in l), "")
            assert any(s in line for s in ("running", "pending", "finished", "early-stopped")), (tid, view)
        assert any(ch.isdigit() for l in view.splitlines() if "running" in l for ch in l.split("running", 1)[1]), view
        p.send_signal(signal.SIGINT)
    finally:
        for w in workers:
            try:
                w.resume()
            except psutil.NoSuchProcess:
                pass
    out, _ = p.communicate(timeout=180)
    assert p.returncode == 130, out[-3000:]
    assert f"Resume with: speechtune tune --resume {exp}" in out and "test CER" not in out, out[-3000:]
    report = (exp / "report.md").read_text()
    assert "**interrupted**" in report and "best checkpoint" not in report and "test CER" not in report
    record = json.loads((exp / "speechtune_job.json").read_text())
    assert "interrupted" in record["outcome"]["status"]
    # the trial that was running is shown interrupted, not early-stopped (its last view printed at
    # the search's end) nor running (the live view read afterwards)
    last_view = out.rsplit("ranked by val_cer", 1)[-1]
    assert "interrupted" in last_view and "early-stopped" not in last_view, out[-3000:]
    assert main(["watch", str(exp), "--once"]) == 0
    view = capsys.readouterr().out
    rows = [ln for ln in view.splitlines() if "│" in ln]
    assert any("interrupted" in ln for ln in rows) and not any("running" in ln for ln in rows), view

    # between the interrupt and --resume: the latest checkpoint Tune names of one trial is truncated,
    # every checkpoint of the other deleted (issue 25). The first resumes from its intact earlier
    # checkpoint, the second starts again from epoch 1; each says so, and the search finishes
    statuses = tune_statuses(exp)
    named = {d: r["checkpoint_dir_name"] for d, r in tune_last_results(exp).items()
             if r.get("checkpoint_dir_name") and statuses.get(d) != "TERMINATED"}
    cut = next((d for d, c in named.items() if c > "checkpoint_000000"), None)
    assert cut and len(named) == 2, (named, statuses)
    gone = next(d for d in named if d != cut)
    os.truncate(exp / cut / named[cut] / "state.pt", 500)
    for c in (exp / gone).glob("checkpoint_*"):
        shutil.rmtree(c)
    r = speechtune("tune", "--resume", str(exp), "--address", ray_cluster.address, env=env)
    out, _ = r.communicate(timeout=300)
    assert r.returncode == 0, out[-3000:]
    said = [ln for ln in out.splitlines() if "WARNING tune_jobs.restarts" in ln]
    assert any(f"{cut}/{named[cut]}/state.pt: checkpoint is broken" in ln and "resumed from" in ln
               for ln in said), "\n".join(said)
    assert any(f"{gone}/{named[gone]} is gone from storage and no other is left: the trial starts again "
               "from epoch 1" in ln for ln in said), "\n".join(said)
    trials, history = load_experiment(exp)
    assert len(trials) == 2 and set(trials.status) <= {"finished", "early-stopped"}  # each planned trial once
    for tid, h in history.groupby("trial_id"):
        assert sorted(h.epoch) == list(range(1, len(h) + 1)), (tid, list(h.epoch))
    assert compare_with_ray(exp).ok  # statuses as Tune's scheduler left them
    first = (exp / "report.md").read_text()
    kept = [line for line in first.splitlines() if line.startswith(("- test CER", "- best checkpoint",
                                                                   "- search wall time", "- resumed"))]
    assert len(kept) == 4 and "interrupted" not in first, first[:2000]

    # `speechtune report` twice: what tune learned (not in Tune's files) stays in the report
    for _ in range(2):  # in this process: the command's code, without two more interpreters' start-up
        assert main(["report", str(exp)]) == 0
        again = (exp / "report.md").read_text()
        assert all(line in again.splitlines() for line in kept), again[:2000]

    # a truncated result.json: a warning, and the trial keeps the status Tune gave it
    finished = trials[trials.status == "finished"].iloc[0]
    res = exp / finished.trial / "result.json"
    res.write_text(res.read_text().splitlines()[0] + "\n")
    with caplog.at_level(logging.WARNING, logger="analysis.load"):
        trials2, _ = load_experiment(exp)
    assert trials2.set_index("trial").loc[finished.trial, "status"] == "finished"
    assert any("truncated" in r.message and finished.trial in r.message for r in caplog.records)


@pytest.mark.timeout(600)
def test_a_storage_that_fills_up_stops_the_search_resumably_and_resume_finishes_once_there_is_room(
        cache_dir, tmp_path, ray_cluster):
    """A 10 MB tmpfs as storage_path (mounted where the shared cluster's workers see it): a
    checkpoint of the demo's smoke profile is 5.8 MB, so the second does not fit. The search
    stops as at an interrupt, names the path and the bytes, exits 75; the tmpfs then grows (the
    user freed space) and --resume finishes the trial (before: `EOFError: Ran out of input`)."""
    import subprocess

    store = tmp_path / "small"
    store.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "none", str(store)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"a tmpfs cannot be mounted here: {mounted.stderr.strip()}")
    try:
        exp = store / "demo"
        env = {"SPEECHTUNE_CACHE": str(cache_dir)}
        demo = edited_job(ROOT / "tune_jobs" / "jobs" / "demo.yaml", tmp_path / "demo.yaml",
                          {"profiles.smoke.num_trials": 1})  # its second epoch's checkpoint is the one that fails
        p = speechtune("tune", str(demo), "--profile", "smoke",
                       "--storage", str(store), "--address", ray_cluster.address, env=env)
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 75, out[-3000:]
        said = next((ln for ln in out.splitlines() if ln.startswith("error: ")), "")
        assert f"{exp}: the storage is full: " in said and " bytes free, a checkpoint of this search needs " in said \
            and said.endswith(f"resume with: speechtune tune --resume {exp}"), out[-3000:]
        assert "EOFError" not in out and "report:" not in out, out[-3000:]
        subprocess.run(["mount", "-o", "remount,size=200m", str(store)], check=True)
        r = speechtune("tune", "--resume", str(exp), "--address", ray_cluster.address, env=env)
        out, _ = r.communicate(timeout=300)
        assert r.returncode == 0, out[-3000:]
        trials, history = load_experiment(exp)
        assert len(trials) == 1 and set(trials.status) == {"finished"}, trials
        for tid, h in history.groupby("trial_id"):
            assert sorted(h.epoch) == [1, 2], (tid, list(h.epoch))
        assert "test CER" in (exp / "report.md").read_text()
    finally:
        subprocess.run(["umount", "-l", str(store)], capture_output=True)
