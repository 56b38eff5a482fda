"""Analysis: loading robust to failed, diverged, corrupt and misnamed trials; findings computed
from the data; reports in Markdown and HTML (opened in headless Chromium); agreement with
Ray's own ExperimentAnalysis. Fixture experiments are written in Tune's layout by
analysis.synthetic (no training), with Ray's own trial-state serializer."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.load import MetricNotFound, load_experiment
from analysis.raycheck import compare_with_ray
from analysis.report import write_report
from analysis.synthetic import FakeTrial, write_experiment

RECORD = {"name": "seed001_like", "family": "seq2seq", "metric": "val_char_acc", "mode": "max", "epochs": 2,
          "tuned": ["lr", "batch_size"], "search_space": {}, "scheduler": {"name": "fifo"}, "searcher": "grid",
          "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0}}


def _rows(accs, **extra):
    return [{"epoch": e + 1, "val_char_acc": a, "val_seq_acc": a / 10, "val_loss": 5 - 4 * a, "cpu_s": 1.0,
             **extra} for e, a in enumerate(accs)]


@pytest.fixture
def broken_exp(tmp_path) -> Path:
    """Seed 001's run as it went wrong: a preset that failed before reporting, a diverged trial,
    a half-written result file, and a trial that wrote its metric under another key."""
    good = json.dumps({**_rows([0.2])[0], "trial_id": "corrupt0", "training_iteration": 1, "time_this_iter_s": 1.0,
                       "time_total_s": 1.0})
    good2 = json.dumps({**_rows([0.2, 0.25])[1], "trial_id": "corrupt0", "training_iteration": 2,
                        "time_this_iter_s": 1.0, "time_total_s": 2.0})
    trials = [
        FakeTrial("small000", {"experiment": "conservative_small", "lr": 1e-3, "batch_size": 32},
                  _rows([0.20, 0.31], model_params=12.5e6)),
        FakeTrial("medium00", {"experiment": "baseline_optimized", "lr": 2e-3, "batch_size": 64},
                  _rows([0.18, 0.245], model_params=20e6)),
        FakeTrial("ctcfail0", {"experiment": "ctc_alignment_free", "lr": 1e-3, "batch_size": 32}, [],
                  status="ERROR", error="ValueError: Unknown preset: ctc"),
        FakeTrial("diverge0", {"experiment": "aggressive_learning", "lr": 5e-2, "batch_size": 128},
                  [*_rows([0.1]), {"epoch": 2, "diverged": 1, "diverged_step": 57, "diverged_value": "nan",
                                   "val_char_acc": float("nan"), "val_loss": float("nan")}]),
        FakeTrial("corrupt0", {"experiment": "fast_convergence", "lr": 5e-3, "batch_size": 96},
                  _rows([0.2, 0.25]), raw_result=good + "\n\x00\x17garbage{{\n" + good2 + "\n{\"epoch\": 3, \"val_ch"),
        FakeTrial("misname0", {"experiment": "focal_loss_experiment", "lr": 1.5e-3, "batch_size": 64},
                  [{"epoch": e + 1, "val_char_accuracy": a, "val_loss": 3.0, "cpu_s": 1.0}
                   for e, a in enumerate([0.2, 0.234])]),
    ]
    return write_experiment(tmp_path / "seed001_like", trials, RECORD)


def _tree_digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(d)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_failed_diverged_corrupt_and_misnamed_trials_each_load_as_they_should(broken_exp, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="analysis.load"):
        trials, history = load_experiment(broken_exp)
    by = {r.trial_id: r for _, r in trials.iterrows()}
    assert len(trials) == 6  # nothing dropped: the failed trial stays in the table
    # failed before reporting anything: status failed, with its error, and no metric
    assert by["ctcfail0"].status == "failed" and "Unknown preset: ctc" in by["ctcfail0"].error
    assert math.isnan(by["ctcfail0"].best_val_char_acc) and by["ctcfail0"].epochs_run == 0
    # diverged: the step and value are given
    assert by["diverge0"].status == "diverged" and "at step 57" in by["diverge0"].error
    # corrupt lines skipped with one warning naming the file and the lines; the good reports kept
    warn = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert len(warn) == 1 and "result.json" in warn[0] and "line(s) 2, 4" in warn[0], warn
    assert by["corrupt0"].best_val_char_acc == 0.25 and by["corrupt0"].epochs_run == 2
    # the misnamed metric is missing, not 0; what the trial did report is kept under its own name
    assert math.isnan(by["misname0"].best_val_char_acc)
    assert by["misname0"].best_val_char_accuracy == 0.234
    # ranked by val_char_acc (max), trials without it after the others
    assert trials.trial_id.tolist()[:3] == ["small000", "corrupt0", "medium00"]
    assert set(history.trial_id) == {"small000", "medium00", "diverge0", "corrupt0", "misname0"}

    before = _tree_digest(broken_exp)
    out = tmp_path / "report"
    text = write_report(broken_exp, out).read_text()
    assert _tree_digest(broken_exp) == before  # the report writes nothing into the experiment it reads
    table = text.split("## Ranking")[1].split("Statuses:")[0]
    lines = [l for l in table.splitlines() if l.startswith("| ")][1:]
    assert lines[0].startswith("| 1 | `small000` | conservative_small | 31.00% |")
    # missing, never 0.00%; a trial without the ranking metric is listed but has no rank
    assert "| - | `misname0` | focal_loss_experiment | n/a |" in table
    assert [l.split(" | ")[0] for l in lines[:3]] == ["| 1", "| 2", "| 3"]
    # failed and diverged last, with their reasons
    fail, div = sorted(lines[-2:], key=lambda l: "diverge0" in l)
    assert fail.startswith("| - | `ctcfail0` | ctc_alignment_free | FAILED |") and "Unknown preset: ctc" in fail
    assert div.startswith("| - | `diverge0` | aggressive_learning | DIVERGED |") and "at step 57" in div
    issues = text.split("## Technical issues")[1].split("## Critical")[0]
    assert "corrupt result line(s) 2, 4" in issues and "Unknown preset: ctc" in issues
    # the tables as Parquet, the missing metric as NaN
    t2 = pd.read_parquet(out / "trials.parquet")
    assert len(t2) == 6 and t2.set_index("trial_id").best_val_char_acc.isna().sum() == 2
    assert len(pd.read_parquet(out / "history.parquet")) == len(history)


def test_a_ranking_metric_absent_from_every_trial_is_an_error_naming_the_keys_reported(tmp_path):
    """Seed 001's bug: the metric was under ``val_metrics``; the table read the wrong key as 0."""
    exp = write_experiment(tmp_path / "bug", [
        FakeTrial(f"t{i}", {"lr": lr}, [{"epoch": 1, "val_metrics": {"char_acc": 0.3 + i / 10}, "val_loss": 2.0}])
        for i, lr in enumerate([1e-3, 2e-3])], RECORD)
    before = _tree_digest(exp)
    with pytest.raises(MetricNotFound, match=r"'val_char_acc' is absent from every trial.*val_loss, "
                                             r"val_metrics/char_acc"):
        load_experiment(exp)
    p = subprocess.run([sys.executable, "-m", "tune_jobs.cli", "report", str(exp)], capture_output=True, text=True)
    assert p.returncode == 2 and "val_metrics/char_acc" in p.stderr and "Traceback" not in p.stderr
    assert _tree_digest(exp) == before  # nothing written, nothing lost


def test_report_agrees_with_rays_experiment_analysis_on_the_fixture(broken_exp):
    from ray.tune import ExperimentAnalysis

    c = compare_with_ray(broken_exp)
    assert c.ok, c.summary()
    assert c.trials_ours == c.trials_ray == 6 and c.compared >= 10
    # Ray cannot parse the half-written result.json and drops that trial's reports; ours kept them
    assert any(e.startswith("corrupt0") for e in c.explained), c.explained
    ea = ExperimentAnalysis(str(broken_exp))
    assert {t.trial_id: t.status for t in ea.trials}["ctcfail0"] == "ERROR"
    # and the check can fail: a trial whose params.json is lost is missing from our table, not Ray's
    small = next(broken_exp.glob("*small000*"))
    (small / "params.json").write_text("{not json")
    bad = compare_with_ray(broken_exp)
    assert not bad.ok and "trial count: ours 5, Ray 6" in bad.problems and \
        any(p.startswith("small000") for p in bad.problems), bad.summary()


def test_epochs_lost_from_a_retried_trials_result_json_are_explained_not_hidden(tmp_path):
    """Ray 2.60 restores a retried trial's result.json from a lagging storage copy: its first
    epochs survive only in progress.csv (CI saw it with a killed worker). Ours reads them there;
    the check must say so."""
    rows = [{"epoch": e, "val_cer": 1.0 - e / 10, "val_cer_auc": float(e), "val_loss": 3.0} for e in range(1, 6)]
    rows[2]["restored_from_epoch"] = 2
    exp = write_experiment(tmp_path / "lag", [FakeTrial("retried0", {"lr": 1e-3}, rows)],
                           {**RECORD, "metric": "val_cer", "mode": "min", "epochs": 5})
    res = next(exp.glob("*retried0*/result.json"))
    res.write_text("".join(res.read_text().splitlines(keepends=True)[2:]))  # epochs 1, 2 lost
    c = compare_with_ray(exp)
    assert c.ok, c.summary()
    assert any("val_cer_auc: Ray 3.0, ours 1.0" in e and "lacks epoch(s) [1, 2]" in e for e in c.explained), c.explained
    # without progress.csv ours lacks those epochs too: the same value, nothing to explain
    (res.parent / "progress.csv").unlink()
    again = compare_with_ray(exp)
    assert again.ok and not again.explained, again.summary()
    assert load_experiment(exp)[0].iloc[0].best_val_cer_auc == 3.0


def test_a_trial_restarted_from_scratch_counts_each_epoch_once(tmp_path):
    """CI saw it: Ctrl-C came after Tune took in a trial's first report but before its saved
    state named that report's checkpoint, so the resumed search restarted the trial from
    scratch and its result.json reads epochs 1, 1, 2, 3. The final model's line is 1, 2, 3; the
    first run's epoch is dropped, and Ray's own reading (both copies) is told apart from ours."""
    lost = {"epoch": 1, "val_cer": 0.2, "val_loss": 3.0}  # the lost run's, better than any kept
    rows = [lost] + [{"epoch": e, "val_cer": 0.9 - e / 10, "val_loss": 3.0} for e in range(1, 4)]
    exp = write_experiment(tmp_path / "restart", [FakeTrial("restart0", {"lr": 1e-3}, rows)],
                           {**RECORD, "metric": "val_cer", "mode": "min", "epochs": 3})
    trials, history = load_experiment(exp)
    assert history.epoch.tolist() == [1, 2, 3] and history.val_cer.tolist() == pytest.approx([0.8, 0.7, 0.6])
    assert trials.iloc[0].best_val_cer == pytest.approx(0.6) and trials.iloc[0].status == "finished"
    c = compare_with_ray(exp)
    assert c.ok and any("superseded" in e for e in c.explained), c.summary()


def _designed_exp(tmp_path) -> Path:
    """Known effects: higher lr is better up to the top of its range, smaller models are better,
    adam beats sgd, every curve still falls at its last epoch, and one trial failed."""
    trials = []
    for i, (lr, opt, size) in enumerate([(1.2e-4, "sgd", 4e6), (3e-4, "adam", 3.5e6), (6e-4, "sgd", 3e6),
                                         (1e-3, "adam", 2.5e6), (2e-3, "sgd", 2e6), (4e-3, "adam", 1.5e6),
                                         (6e-3, "sgd", 1.2e6), (9.5e-3, "adam", 1e6)]):
        base = 0.9 - 0.07 * i - (0.05 if opt == "adam" else 0)
        cer = [base + 0.3, base + 0.1, base]
        trials.append(FakeTrial(f"d{i}", {"lr": lr, "optimizer": opt},
                                [{"epoch": e + 1, "val_cer": c, "val_loss": 10 * c, "model_params": size}
                                 for e, c in enumerate(cer)]))
    trials.append(FakeTrial("oom", {"lr": 1e-3, "optimizer": "adam"}, [], status="ERROR",
                            error="RuntimeError: CUDA out of memory"))
    rec = {"name": "designed", "family": "crnn_ctc", "metric": "val_cer", "mode": "min", "epochs": 3,
           "search_space": {"lr": {"loguniform": [1e-4, 1e-2]}, "optimizer": {"choice": ["adam", "sgd"]}},
           "tuned": ["lr", "optimizer"], "scheduler": {"name": "fifo"}, "searcher": "random",
           "resources": {"cpus_per_trial": 2, "gpus_per_trial": 0}}
    return write_experiment(tmp_path / "designed", trials, rec)


def test_findings_and_next_steps_are_computed_from_the_data(tmp_path):
    exp = _designed_exp(tmp_path)
    write_report(exp, tmp_path / "rep")
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    by = {}
    for f in rep["findings"]:
        by.setdefault(f["kind"], []).append(f)
    lr = next(f for f in by["effect"] if f["data"]["param"] == "lr")
    assert lr["data"]["rho"] == pytest.approx(-1.0) and "higher values did better" in lr["text"]
    opt = next(f for f in by["effect"] if f["data"]["param"] == "optimizer")
    assert opt["data"]["medians"]["adam"] < opt["data"]["medians"]["sgd"]
    assert [f["data"]["param"] for f in by["edge"]] == ["lr"] and by["edge"][0]["data"]["side"] == "high"
    assert by["longer"][0]["data"]["trials"] and by["longer"][0]["data"]["best_rising"]
    assert by["size"][0]["data"]["better"] == "smaller" and by["size"][0]["data"]["rho"] == pytest.approx(1.0)
    assert "Smaller models performed better" in by["size"][0]["text"]
    assert by["failures"][0]["data"]["trials"] == ["oom"]
    imp = by["importance"][0]["data"]["importance"]
    assert max(imp, key=imp.get) == "lr"
    steps = "\n".join(rep["next_steps"])
    assert "Fix the failed trials" in steps and "Train longer" in steps and "Extend `lr` above" in steps
    assert "smaller models" in steps
    md = (tmp_path / "rep" / "report.md").read_text()
    for section in ("## Key findings", "## Technical issues", "## Critical findings", "## Next steps",
                    "## Best configuration", "## Plots"):
        assert section in md
    assert (tmp_path / "rep" / "plots" / "curves.png").is_file()


def test_compare_sets_two_experiments_side_by_side(tmp_path, broken_exp):
    exp = _designed_exp(tmp_path)
    p = subprocess.run([sys.executable, "-m", "tune_jobs.cli", "report", str(exp), "--compare", str(broken_exp),
                        "--out", str(tmp_path / "cmp"), "--check-ray"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "all agree" in p.stdout
    md = (tmp_path / "cmp" / "report.md").read_text()
    cmp = md.split("## Compared with another experiment")[1]
    assert "| trials | 9 | 6 |" in cmp and "this: `designed`" in cmp and "other: `seed001_like`" in cmp


def test_html_report_opens_in_headless_chromium_with_table_and_plot(tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.fail("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    from matplotlib.image import imread
    from playwright.sync_api import sync_playwright

    exp = _designed_exp(tmp_path)
    write_report(exp, tmp_path / "rep")
    page_file = tmp_path / "rep" / "report.html"
    assert "data:image/png;base64," in page_file.read_text()  # self-contained
    shutil.rmtree(tmp_path / "rep" / "plots")  # the HTML must not need the PNG files
    shot = tmp_path / "shot.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1300, "height": 2400})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(r.url[:80]))
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        table = page.locator("table").first.bounding_box()
        imgs = page.evaluate("Array.from(document.images).map(i => [i.naturalWidth, i.getBoundingClientRect().top,"
                             " i.getBoundingClientRect().left, i.getBoundingClientRect().width,"
                             " i.getBoundingClientRect().height])")
        header = page.locator("table").first.locator("th").all_inner_texts()
        page.screenshot(path=str(shot))
        browser.close()
    assert not errors and not failed, (errors, failed)
    assert header[:3] == ["rank", "trial", "best val CER"]
    assert imgs and all(w > 0 for w, *_ in imgs), imgs  # every plot decoded
    px = imread(shot)  # (H, W, 4) floats
    h = px.shape[0]

    def ink(top, left, width, height) -> float:
        """Share of non-white pixels in a region of the screenshot."""
        r = px[int(top):int(min(top + height, h)), int(left):int(left + width), :3]
        return float((r.mean(axis=2) < 0.9).mean()) if r.size else 0.0

    assert table["y"] + table["height"] < h and ink(table["y"], table["x"], table["width"], table["height"]) > 0.02
    on_screen = [i for i in imgs if i[1] + i[4] < h]
    assert on_screen and ink(*on_screen[0][1:]) > 0.02  # a plot is in the screenshot, drawn


def _edits(n_utts: int, errors_of) -> list[tuple]:
    """Per-utterance (id, char errors, chars, word errors, words) rows, 20 chars / 4 words each."""
    return [(f"u{i:03d}", errors_of(i), 20, min(4, errors_of(i)), 4) for i in range(n_utts)]


def test_intervals_ties_and_findings_at_equal_budget_on_a_hand_built_experiment(tmp_path):
    """Two trials with identical per-utterance errors are tied; a clearly worse one is not; a trial
    ASHA stopped at epoch 1 is compared with the others only at epoch 1; the intervals are
    kaldialign's own figures."""
    import jiwer
    import kaldialign

    from analysis.confidence import interval, p_improves
    from analysis.insights import budgets
    from analysis.report import analyse, ranking_table
    from asr_core.metrics import sentence_edits

    # the interval of stored edit counts is the library's interval of the sentences themselves
    refs = [f"the {w} sat on mat number {i}" for i, w in enumerate(["cat", "dog", "cow", "hen"] * 10)]
    hyps = [r.replace("a", "e", i % 3) + ("x" if i % 4 == 0 else "") for i, r in enumerate(refs)]
    ours = interval(sentence_edits(jiwer.process_characters(refs, hyps)))
    lib = kaldialign.bootstrap_wer_ci([list(r) for r in refs], [list(h) for h in hyps])
    assert (ours.mean, ours.low, ours.high) == pytest.approx((lib["wer"], lib["ci95min"], lib["ci95max"]))
    assert ours.rate == pytest.approx(jiwer.cer(refs, hyps))  # the figure shown is the rate itself
    better = [r if i % 2 else h for i, (r, h) in enumerate(zip(refs, hyps))]
    two = kaldialign.bootstrap_wer_ci([list(r) for r in refs], [list(h) for h in hyps], [list(b) for b in better])
    assert p_improves(sentence_edits(jiwer.process_characters(refs, hyps)),
                      sentence_edits(jiwer.process_characters(refs, better))) == pytest.approx(two["p_s2_improv_over_s1"])

    n = 120
    good = _edits(n, lambda i: 1 if i % 3 == 0 else 0)    # CER 1/60
    bad = _edits(n, lambda i: 3 if i % 2 == 0 else 1)     # CER 1/10
    cer = lambda e: sum(r[1] for r in e) / sum(r[2] for r in e)  # noqa: E731

    def trial(tid, lr, curve, edits_by_epoch, status="TERMINATED"):
        rows = [{"epoch": k + 1, "val_cer": v, "val_wer": v, "val_loss": 10 * v} for k, v in enumerate(curve)]
        return FakeTrial(tid, {"lr": lr}, rows, status=status, checkpoints=edits_by_epoch)

    trials = [
        trial("best", 1e-3, [0.30, 0.10, cer(good)], {3: good}),
        trial("twin", 2e-3, [0.31, 0.11, cer(good)], {3: good}),   # the same errors: tied with the best
        trial("poor", 4e-3, [0.32, 0.20, cer(bad)], {3: bad}),
        trial("quick", 8e-3, [0.05], {1: bad}),                    # best at epoch 1, then stopped by ASHA
    ]
    record = {"name": "ties", "family": "crnn_ctc", "metric": "val_cer", "mode": "min", "epochs": 3,
              "search_space": {"lr": {"loguniform": [1e-4, 1e-2]}}, "tuned": ["lr"], "max_concurrent": 2,
              "scheduler": {"name": "asha", "grace_period": 1, "max_t": 3, "reduction_factor": 3}}
    exp = write_experiment(tmp_path / "ties", trials, record)
    a = analyse(exp)
    t = a.trials.set_index("trial_id")
    assert not t.loc["twin"].p_best_better > 0 and bool(t.loc["twin"].tied_with_best)  # P = 0: tied
    assert t.loc["poor"].p_best_better >= 0.95 and not t.loc["poor"].tied_with_best
    assert t.loc["best"].ci_cer == pytest.approx(cer(good))
    assert t.loc["best"].ci_cer_low < cer(good) < t.loc["best"].ci_cer_high
    vs = {r[1]: r[ranking_table(a).head.index("vs best")] for r in ranking_table(a).rows}
    assert vs["`best`"] == "best" and vs["`twin`"].startswith("**tied**") and vs["`poor`"] == "worse (P = 1.00)"

    # equal budget: epoch 1 compares all four (quick's 0.05 is best there); epoch 3 only the three
    views = budgets(a.trials, a.history, "val_cer", True)
    assert [(v.epochs, len(v.trials)) for v in views] == [(1, 4), (3, 3)]
    at1 = views[0].trials.set_index("trial_id")["best_val_cer"]
    assert at1.to_dict() == pytest.approx({"best": 0.30, "twin": 0.31, "poor": 0.32, "quick": 0.05})
    effects = [f for f in a.findings if f.kind == "effect" and f.data["param"] == "lr"]
    assert [f.data["budget"] for f in effects] == [1, 3] and [f.data["n"] for f in effects] == [4, 3]
    assert "at epoch 1 (every trial)" in effects[0].text and "at epoch 3 (the 3 trials that reached it)" in effects[1].text
    # two scored trials of three per value at most: grouped findings would be anecdotal
    assert all(not f.anecdotal for f in effects)


def test_a_baseline_the_scheduler_stopped_early_is_not_called_beaten():
    """ASHA may stop the baseline at its first rung; its test score then belongs to a model trained
    for less, and the report's first line says there is no equal-budget comparison."""
    from types import SimpleNamespace

    from analysis.report import baseline_items

    iv = lambda r: {"rate": r, "low": r - 0.01, "high": r + 0.01, "n": 600}  # noqa: E731
    scores = {"utterances": 600, "best_cer": iv(0.045), "baseline_cer": iv(0.66), "p_best_improves_cer": 1.0,
              "baseline_source": "the untuned values",
              "baseline": {"trial_id": "b1", "params": {"lr": 0.004}, "status": "early-stopped",
                           "epochs_run": 2, "epochs_planned": 18, "short": True}}
    a = SimpleNamespace(test_scores=scores, metric="val_cer", record={})
    first = baseline_items(a)[0]
    assert first.startswith("**no equal-budget comparison with the baseline**") and "after 2 of 18 epochs" in first
    assert "beat" not in first and "probability" not in first
    scores["baseline"].update(status="finished", epochs_run=18, short=False)
    scores["budget"] = "18 epochs each"  # as tune_jobs.workflow writes it
    first = baseline_items(a)[0]
    assert first.startswith("**tuning beat the baseline** at equal budget (18 epochs each)")
    assert "probability that the best improves on the baseline 1.000" in first


def test_when_the_baseline_is_best_the_report_opens_with_the_closest_tuned_configuration_against_it():
    """'Tuning found nothing better' says by how much and how sure: the best tuned configuration
    against the baseline on test (intervals, probability of improvement), at equal budget when
    both ran as long, and says so when the scheduler stopped the tuned one sooner."""
    from types import SimpleNamespace

    from analysis.report import baseline_items

    iv = lambda r: {"rate": r, "low": r - 0.01, "high": r + 0.01, "n": 600}  # noqa: E731
    runner = {"trial_id": "r2", "epochs_run": 12, "short": False, "budget": "12 epochs each",
              "best_cer": iv(0.0737), "baseline_cer": iv(0.0664), "p_best_improves_cer": 0.004}
    scores = {"utterances": 600, "best_cer": iv(0.0664), "baseline_source": "the untuned values", "runner_up": runner,
              "baseline": {"trial_id": "b1", "epochs_run": 12, "epochs_planned": 12, "is_best": True}}
    first = baseline_items(SimpleNamespace(test_scores=scores, metric="val_cer", record={}))[0]
    assert first.startswith("**the baseline was the best configuration**")
    assert "trial `r2`) at equal budget (12 epochs each): test CER 7.37% [6.37%, 8.37%] against 6.64%" in first
    assert "(-0.73 points); probability that it improves on the baseline 0.004" in first
    runner.update(epochs_run=3, short=True)
    first = baseline_items(SimpleNamespace(test_scores=scores, metric="val_cer", record={}))[0]
    assert "it ran 3 epochs, the baseline 12: not an equal-budget comparison" in first and "at equal budget" not in first


def test_watch_lists_trials_that_have_not_reported_yet(tmp_path, capsys, monkeypatch):
    """A search's first seconds: both trials have started (Tune state RUNNING), neither has
    written a report. The live view lists them, running at epoch 0 with no value, instead of
    failing on the empty history (it did: no trial_id column)."""
    from tune_jobs.cli import main

    exp = write_experiment(tmp_path / "starting", [FakeTrial("first000", {"lr": 1e-3}, [], status="RUNNING"),
                                                   FakeTrial("second00", {"lr": 2e-3}, [], status="RUNNING")],
                           {**RECORD, "num_trials": 2, "search_space": {"lr": {}}})
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    assert main(["watch", str(exp), "--once"]) == 0
    view = capsys.readouterr().out
    lines = [l for l in view.splitlines() if "first000" in l or "second00" in l]
    assert len(lines) == 2 and all("running" in l and "0/2" in l for l in lines), view


def test_a_record_written_before_records_had_a_version_reads_and_ranks_as_it_did(tmp_path):
    """tests/data/record_v0: a real two-trial phase (`steady`; `blowup`, diverged after its best
    epoch) whose record was written before ExperimentRecord (no `version`), ranked by val_loss,
    not the default val_cer. Its report's Ranking section, as the code of that day wrote it, is
    tests/data/record_v0.ranking.md; read now, the record keeps its keys and the ranking is the same."""
    from analysis.load import rank
    from analysis.record import VERSION, ExperimentRecord, read_record

    data = Path(__file__).parent / "data"
    exp = shutil.copytree(data / "record_v0", tmp_path / "rate")
    rec = read_record(exp)
    assert rec.found and rec.version == 0 and (rec.metric, rec.mode) == ("val_loss", "min")
    assert set(rec.trials) == {"steady", "blowup"} and rec.trials["steady"] == {"lr": 1.0e-4}
    assert rec.phase["name"] == "rate" and rec.resources.num_workers == 1 and "best checkpoint" in rec.outcome
    trials, _ = load_experiment(exp)
    assert list(rank(trials, rec)["config/experiment"]) == ["steady"]
    text = write_report(exp, tmp_path / "report").read_text()
    ranking = "## Ranking" + text.split("## Ranking")[1].split("Statuses:")[0]
    assert ranking == (data / "record_v0.ranking.md").read_text()
    # the best configuration as a job file's own keys: no machine paths, nothing the job layer adds
    block = text.split("## Best configuration")[1].split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(block) == {"family": "crnn_ctc", "preset": "tiny", "params": {
        "epochs": 2, "n_mels": 40, "batch_bins": 200000, "lr": 1.0e-4, "optimizer": "sgd", "grad_clip": 0,
        "schedule": "step", "step_size": 1}}
    # written again, it is a record of this version with the same values
    again = ExperimentRecord.from_dict(json.loads(rec.to_json()))
    assert again.version == VERSION and again.to_dict() == rec.to_dict()
    newer = {**json.loads((exp / "speechtune_job.json").read_text()), "version": VERSION + 1}
    with pytest.raises(ValueError, match="newer speechtune"):
        ExperimentRecord.from_dict(newer)


def test_three_trials_give_no_correlation_p_value_but_say_they_are_too_few(tmp_path):
    """A rank correlation of three points is -1 or 1 by chance one time in three (scipy's p for a
    perfect 3 is 0): the findings say the trials are too few instead of stating one."""
    trials = [FakeTrial(f"t{i}", {"lr": lr}, [{"epoch": 1, "val_cer": cer, "model_params": size}])
              for i, (lr, cer, size) in enumerate([(1e-4, 0.9, 1e6), (1e-3, 0.6, 2e6), (1e-2, 0.3, 3e6)])]
    rec = {"name": "three", "family": "crnn_ctc", "metric": "val_cer", "mode": "min", "epochs": 1,
           "search_space": {"lr": {"loguniform": [1e-4, 1e-2]}}, "tuned": ["lr"]}
    exp = write_experiment(tmp_path / "three", trials, rec)
    write_report(exp, tmp_path / "rep")
    found = json.loads((tmp_path / "rep" / "report.json").read_text())["findings"]
    lr = next(f for f in found if f["kind"] == "effect" and f["data"].get("param") == "lr")
    size = next(f for f in found if f["kind"] == "size")
    assert lr["data"]["too_few"] and "3 scored trials" in lr["text"] and "too few" in lr["text"]
    assert size["data"]["too_few"] and "too few" in size["text"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Spearman" not in md and "p = " not in md


def test_watch_times_the_epochs_left_shows_an_interrupt_and_never_cuts_a_value(tmp_path, capsys, monkeypatch):
    """The live view said "remaining ~0:00:17" with 9 epochs of 33 s left (it waited for a trial
    to end, then halved the running ones), showed the trials of an interrupted search as running or
    early-stopped (the report says interrupted), and cut `lstm_hidden=160` to `16…` in a narrow
    console. One trial of three has run 1 of its 10 epochs at 33 s; one slot."""
    from analysis.watch import snapshot
    from tune_jobs.cli import main
    from tune_jobs.runner import save_outcome

    record = {**RECORD, "num_trials": 3, "max_concurrent": 1, "epochs": 10, "tuned": ["lstm_hidden", "lr"],
              "search_space": {"lstm_hidden": {}, "lr": {}}}
    exp = write_experiment(tmp_path / "slow", [
        FakeTrial("first000", {"lstm_hidden": 160, "lr": 0.00123, "epochs": 10},
                  [{"epoch": 1, "val_char_acc": 0.2, "time_this_iter_s": 33.0}], status="RUNNING")], record)
    snap = snapshot(exp)
    # 9 epochs x 33 s of the running trial, and 2 trials not yet created x 10 epochs x 33 s, one slot
    assert snap.remaining_s == pytest.approx(9 * 33 + 2 * 10 * 33)
    monkeypatch.setenv("COLUMNS", "80")  # rich's width off a terminal
    capsys.readouterr()
    assert main(["watch", str(exp), "--once"]) == 0
    view = capsys.readouterr().out
    assert "remaining ~0:15:57" in view and "…" not in view, view
    words = view.split()
    assert "lstm_hidden=160," in words and "lr=0.00123" in words and "running" in words, view
    assert "val_char_acc" in words and "33.0" in words  # no header cut inside a word, no column lost

    save_outcome(str(exp), {"status": f"**interrupted** after 40 s; no test evaluation. Resume: "
                                      f"`speechtune tune --resume {exp}`"})
    assert main(["watch", str(exp), "--once"]) == 0
    view = capsys.readouterr().out
    line = next(ln for ln in view.splitlines() if "first000" in ln and "│" in ln)
    assert "interrupted" in line and "running" not in line and "0 running, 3 pending" in view, view
    assert "remaining ~0:15:57" in view  # what a resume has left to run
