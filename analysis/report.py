"""Tuning reports from the trial data: ``report.md`` and a self-contained ``report.html`` per
experiment (ranking table in seed 001's form, findings with their numbers, technical issues,
critical findings, next steps, plots), ``trials.parquet`` / ``history.parquet``, and for a
staged study a methodology in seed 002's form (``study.md`` and ``index.html``).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import blocks
from analysis import confidence as conf
from analysis import insights as ins
from analysis.load import CANNOT_WIN, load_experiment, rank, save_tables, tuned_params
from analysis.record import ExperimentRecord, read_record

STATUS_TEXT = ("Statuses: finished = ran all planned epochs; early-stopped = stopped by the scheduler; "
               "diverged = its loss became NaN or infinite (the step is given); "
               "failed = raised an error (both listed last with their reason). A metric a trial never reported "
               "shows as n/a.")
# the family metrics a ranking table shows when trials report them (besides the job's own metric)
HEADLINE = ("val_cer", "val_wer", "val_char_acc", "val_seq_acc", "val_lid_acc", "val_loss", "val_mel_loss",
            "val_stop_acc", "steps_to_target")


def _fmt(v) -> str:
    return ins.fmt(v)


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def show(metric: str, v) -> str:
    """A metric's value as the registry formats it: error rates and accuracies as percentages."""
    from asr_core.metrics import KNOWN, derived

    m = derived(metric, KNOWN)
    return _pct(v) if m is not None and m.fmt.endswith("%") else _fmt(v)


def _title(metric: str) -> str:
    m = metric.removeprefix("val_")
    return ("val " if metric.startswith("val_") else "") + (m.upper() if m in ("cer", "wer") else m.replace("_", " "))


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@dataclass
class Analysis:
    """Everything a report says about one experiment."""
    exp: str
    local: Path
    record: ExperimentRecord
    trials: pd.DataFrame
    history: pd.DataFrame
    params: list[str]           # config columns shown (``config/...``)
    findings: list = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    test_scores: dict | None = None  # test_scores.json: the best against the baseline on test

    @property
    def has_intervals(self) -> bool:
        return "ci_cer" in self.trials and self.trials.ci_cer.notna().any()

    @property
    def metric(self) -> str:
        return self.record.metric

    @property
    def mode(self) -> str:
        return self.record.mode

    def shown_metrics(self) -> list[str]:
        ms = [self.metric]
        for m in HEADLINE:
            c = f"best_{m}"
            if m != self.metric and c in self.trials and self.trials[c].notna().any():
                ms.append(m)
        return ms[:3] if self.has_intervals else ms[:5]  # room for the interval columns

    def ranked(self) -> pd.DataFrame:
        """The trials that can win, best first (``analysis.load.rank``, the one ranking)."""
        return rank(self.trials, self.record)

    def best(self):
        ok = self.ranked()
        return ok.iloc[0] if not ok.empty else None

    def config_of(self, r) -> dict:
        """A trial's config columns without the per-machine paths (manifests, cache)."""
        return {c.removeprefix("config/"): r[c] for c in self.trials.columns
                if c.startswith("config/") and not c.endswith(("_manifest", "cache_dir"))}

    def label(self, r, values: bool = False) -> str:
        """A named trial's name; else its trial id, or (``values``) its varied settings."""
        name = r.get("config/experiment")
        if isinstance(name, str) and name:
            return str(name)
        if values:
            keys = [c for c in self.params if c != "config/experiment"]
            if keys:
                return ", ".join(f"{c.removeprefix('config/')}={_fmt(r[c])}" for c in keys)
        return str(r.trial_id)


def analyse(exp_dir: str | os.PathLike) -> Analysis:
    from asr_core import storage as store

    remote = str(exp_dir) if store.is_remote(exp_dir) else None
    local = store.local_copy(exp_dir)
    handler = _Collect()
    logger = logging.getLogger("analysis.load")
    logger.addHandler(handler)
    try:
        trials, history = load_experiment(local)
    finally:
        logger.removeHandler(handler)
    rec = read_record(local)
    params = tuned_params(local, trials, rec)
    if not trials.empty:
        ci = conf.trial_intervals(local, trials, rec)
        if not ci.empty:
            trials = trials.merge(ci, on="trial", how="left")
    scores = local / "test_scores.json"
    a = Analysis(remote or str(local), local, rec, trials, history, params, warnings=handler.messages,
                 test_scores=json.loads(scores.read_text()) if scores.is_file() else None)
    if not trials.empty:
        got = ins.analyse(trials, history, rec, [c.removeprefix("config/") for c in params])
        a.findings, a.next_steps = got["findings"], got["next_steps"]
    return a


# ---------------------------------------------------------------- tables

def ranking_table(a: Analysis) -> blocks.Table:
    """Seed 001's table: rank, trial, the job's metrics, epoch of best, epochs, status, key parameters;
    failed and diverged trials last with their reason (flagged)."""
    t = a.trials
    ms = a.shown_metrics()
    pcols = [c for c in a.params if c != "config/experiment"]
    named = "config/experiment" in a.params
    head = ["rank", "trial", *(["experiment"] if named else []), *[f"best {_title(m)}" for m in ms],
            f"epoch of best {a.metric}", "epochs", "status", *[c.removeprefix("config/") for c in pcols]]
    ci = a.has_intervals
    if ci:  # 95% bootstrap intervals on the dev set at the best epoch (analysis.confidence)
        head[head.index(f"epoch of best {a.metric}"):head.index(f"epoch of best {a.metric}")] = \
            ["dev CER [95% CI]", "dev WER [95% CI]", "vs best"]
    rows = []
    if t.empty:
        return blocks.table(head, rows)
    broken = t.status.isin(CANNOT_WIN)
    ranked = a.ranked()
    # the ranking (analysis.load.rank), then the trials that have not reported the metric yet
    # (unranked, "-"), then the failed and diverged ones, flagged with their reason
    unscored = t[~broken & ~t.index.isin(ranked.index)]
    for pos, (_, r) in enumerate(pd.concat([ranked, unscored]).iterrows(), start=1):
        rows.append([str(pos) if pos <= len(ranked) else "-", f"`{r.trial_id}`",
                     *([_fmt(r.get("config/experiment"))] if named else []),
                     *[show(m, r.get(f"best_{m}")) for m in ms], *(_ci_cells(r, pos) if ci else []),
                     _fmt(r[f"best_{a.metric}_epoch"]), _fmt(r.epochs_run), r.status, *[_fmt(r[c]) for c in pcols]])
    for _, r in t[broken].iterrows():
        rows.append(["-", f"`{r.trial_id}`", *([_fmt(r.get("config/experiment"))] if named else []),
                     r.status.upper(), *["-"] * (len(ms) - 1), *(["-"] * 3 if ci else []), "-", _fmt(r.epochs_run),
                     f"{r.status}: {str(r.error)[:160]}", *[_fmt(r[c]) for c in pcols]])
    ok = int((~broken).sum())
    return blocks.table(head, rows, flagged=range(ok, len(rows)))


def _interval(r, name: str) -> str:
    v = r.get(f"ci_{name}")
    if v is None or v != v:
        return "n/a"
    return conf.Interval(v, r[f"ci_{name}_low"], r[f"ci_{name}_high"], 0).text()


def _ci_cells(r, rank: int) -> list[str]:
    """dev CER and WER with intervals, and how the best compares: tied (the probability that
    the best improves on this trial is under 0.95) or worse."""
    p = r.get("p_best_better")
    if rank == 1:
        vs = "best"
    elif p is None or p != p:
        vs = "n/a"
    else:
        vs = f"{'**tied**' if p < conf.SURE else 'worse'} (P = {p:.2f})"
    return [_interval(r, "cer"), _interval(r, "wer"), vs]


def _budget(scores: dict) -> str:
    """' at equal budget (N epochs each)': the baseline ran at least as long as the best
    (``short`` is false then); test_scores.json's ``budget`` says how long each ran."""
    return f" at equal budget ({scores['budget']})" if scores.get("budget") else " at equal budget"


def baseline_items(a: Analysis) -> list:
    """The report's first lines: the tuned best against the baseline on the test split."""
    sc = a.test_scores
    if not sc:
        src = a.record.baseline
        return [f"baseline: {src.source}; no test comparison (test evaluation off or not run)"] \
            if src.params is None and src.source else []
    unit = "wer" if a.metric.endswith("wer") else "cer"
    b = conf.Interval(**sc[f"best_{unit}"])
    items = []
    base = sc.get("baseline")
    if base is None:
        items.append(f"**no baseline trial** ({sc.get('baseline_source') or 'none'}): test {unit.upper()} of the "
                     f"best {b.text()} on {sc['utterances']} utterances (95% interval)")
    elif base.get("is_best"):
        r = sc.get("runner_up")
        if r:  # the tuned configuration that came closest, against the baseline
            ri, p = conf.Interval(**r[f"best_{unit}"]), r[f"p_best_improves_{unit}"]
            when = (f" at equal budget ({r['budget']})" if not r.get("short") else
                    f" (it ran {r.get('epochs_run')} epochs, the baseline {base.get('epochs_run')}: not an "
                    f"equal-budget comparison)")
            items.append(f"**the baseline was the best configuration**: tuning found nothing better. The best tuned "
                         f"configuration (trial `{r.get('trial_id')}`){when}: test {unit.upper()} {ri.text()} against "
                         f"{b.text()} for the baseline ({100 * (b.rate - ri.rate):+.2f} points); probability that it "
                         f"improves on the baseline {p:.3f} (paired bootstrap, {sc['utterances']} test utterances; "
                         f"95% intervals in brackets)")
        else:
            items.append(f"**the baseline was the best configuration**: tuning found nothing better; test "
                         f"{unit.upper()} {b.text()} on {sc['utterances']} utterances")
    else:
        base_i = conf.Interval(**sc[f"baseline_{unit}"])
        p = sc[f"p_best_improves_{unit}"]
        diff = base_i.rate - b.rate
        rel = diff / base_i.rate if base_i.rate else math.nan
        if base.get("short"):
            head = (f"**no equal-budget comparison with the baseline**: the scheduler stopped the baseline after "
                    f"{base.get('epochs_run')} of {base.get('epochs_planned')} epochs (it was behind at that point "
                    f"on dev), so its test {unit.upper()} {base_i.text()} is that of a model trained for less; "
                    f"the best's is {b.text()}. How much tuning gained at equal budget is not measured here")
        elif p >= conf.SURE:
            head = (f"**tuning beat the baseline**{_budget(sc)}: test {unit.upper()} {b.text()} against "
                    f"{base_i.text()} for the baseline ({100 * diff:+.2f} points, {rel:.0%} fewer errors)")
        else:
            head = (f"**tuning did not beat the baseline beyond the noise**{_budget(sc)}: test {unit.upper()} "
                    f"{b.text()} against {base_i.text()} for the baseline ({100 * diff:+.2f} points)")
        odds, how = ("", "") if base.get("short") else \
            (f"; probability that the best improves on the baseline {p:.3f}", "paired bootstrap, ")
        items.append(f"{head}{odds} ({how}{sc['utterances']} test utterances; 95% intervals in brackets)")
        items.append(f"baseline: trial `{base['trial_id']}`, {sc.get('baseline_source', '')}: "
                     + ", ".join(f"`{k}` = {_fmt(v)}" for k, v in (base.get("params") or {}).items()))
    h = sc.get("test_hard")
    if h:
        items.append(f"robustness: the best checkpoint's CER on test_hard (unseen voices at speaking rates and noise "
                     f"levels beyond the training range, {h['utterances']} utterances) is {100 * h['cer']:.2f}%, "
                     f"{h['cer_ratio']:.2f}x its test CER {100 * sc['best_cer']['rate']:.2f}%")
    return items


def utilisation(t: pd.DataFrame, slots: int) -> str | None:
    """Busy slot-seconds over available slot-seconds, and wall time over trial time per slot."""
    if t.empty or "started_at" not in t or t.started_at.isna().all() or not slots:
        return None
    span = float(t.ended_at.max() - t.started_at.min())
    busy = float(t.cost_wall_s.sum())
    if span <= 0 or busy <= 0:
        return None
    return (f"search utilisation: {busy / (span * slots):.0%} of {slots} slot(s) busy ({busy:.0f} of "
            f"{span * slots:.0f} slot-seconds); wall time {span:.0f} s = {span / (busy / slots):.2f}x the "
            f"trial time per slot")


# ---------------------------------------------------------------- sections

def summary_items(a: Analysis, extra: dict | None = None) -> list:
    """The summary's items: strings, or (text, [sub-items])."""
    t, rec = a.trials, a.record
    items: list = [*baseline_items(a), f"experiment: `{a.exp}`",
                   f"family: `{rec.family or 'n/a'}`, ranked by `{a.metric}` ({a.mode})",
                   f"trials: {len(t)} ({', '.join(f'{n} {s}' for s, n in t.status.value_counts().items())})"
                   if not t.empty else "trials: 0"]
    sched = rec.scheduler
    if sched:
        items.append(f"scheduler: `{sched.get('name')}`, searcher: `{rec.searcher or 'n/a'}`")
    for k, v in (extra or {}).items():
        items.append(f"{k}: {v}")
    skipped = rec.skipped
    if skipped:
        items.append((f"rows skipped (--skip-bad): {len(skipped)}",
                      [*skipped[:20], *([f"... and {len(skipped) - 20} more"] if len(skipped) > 20 else [])]))
    phase = rec.phase
    if phase:
        sub = [f"`{k}` = {c['value']} (<OPT>: best of phase `{c['phase']}`, trial `{c['trial']}`, "
               f"{c['metric']} {_fmt(c['metric_value'])})" for k, c in (phase.get("carried") or {}).items()]
        if phase.get("init_checkpoint"):
            sub.append(f"every trial starts from `{phase['init_checkpoint']}`")
        items.append((f"study `{phase.get('study')}`, phase {phase.get('index', 0) + 1}: `{phase.get('name')}`", sub))
    if rec.require:
        items.append(f"required: {', '.join(f'{m} {b}' for m, b in rec.require.items())}; "
                     f"{int((~t.feasible.astype(bool)).sum()) if 'feasible' in t else 0} trial(s) never met it "
                     "and cannot win")
    if not t.empty and "cost_wall_s" in t:
        items.append(f"cost: {t.cost_wall_s.sum():.0f} trial-seconds of wall time, "
                     f"{t.cost_cpu_s.sum():.0f} CPU-seconds used of {t.cost_cpu_reserved_s.sum():.0f} "
                     f"reserved, {t.cost_gpu_s.sum():.0f} GPU-seconds")
        u = utilisation(t, rec.max_concurrent)
        if u:
            items.append(u)
        if t.time_to_target_s.notna().any():
            items.append(f"fastest to target: {t.time_to_target_s.min():.0f} s of trial wall time")
        if int(t.exploits.sum()):
            items.append(f"PBT exploits: {int(t.exploits.sum())} (a trial continued from another's checkpoint)")
    b = a.best()
    if b is not None and pd.notna(b[f"best_{a.metric}"]):
        items.append(f"**best: `{a.label(b)}`** (trial `{b.trial_id}`), {a.metric} "
                     f"**{show(a.metric, b[f'best_{a.metric}'])}** at epoch {_fmt(b[f'best_{a.metric}_epoch'])} "
                     f"of {_fmt(b.epochs_run)}")
    return items


def best_config(a: Analysis, r) -> dict:
    """Trial ``r``'s configuration as a job-file fragment of the user's own keys: the family, the
    preset, and under ``params`` the keys the job set, searched or named, with their values in
    this trial (``config_of``: no machine paths). Without a record: the keys that vary."""
    rec = a.record
    own = dict.fromkeys([*(rec.job.get("params") or {}), *rec.searched,
                         *(k for p in rec.trials.values() for k in p)]) \
        or dict.fromkeys(c.removeprefix("config/") for c in a.params)
    cfg = a.config_of(r)
    params = {k: cfg[k].item() if hasattr(cfg[k], "item") else cfg[k] for k in own
              if k in cfg and k not in ("family", "preset", "experiment") and cfg[k] is not None
              and not (isinstance(cfg[k], float) and math.isnan(cfg[k]))}
    preset = cfg.get("preset")
    frag = {"family": rec.family or cfg.get("family"),
            "preset": preset if isinstance(preset, str) and preset else rec.preset}
    return {**{k: v for k, v in frag.items() if v}, "params": params}


def best_config_blocks(a: Analysis) -> list:
    import yaml

    b = a.best()
    if b is None:
        return []
    size = f" ({b.model_params / 1e6:.2f}M parameters)" if pd.notna(b.get("model_params")) else ""
    text = yaml.safe_dump(best_config(a, b), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return [blocks.Heading("Best configuration"),
            blocks.Paragraph(f"`{a.label(b)}`{size}, as a job file's keys (paste into one):"),
            blocks.Code(text.rstrip(), "yaml")]


def findings_block(a: Analysis):
    key = [f.text for f in a.findings if f.kind in ("effect", "importance", "size", "edge", "longer", "spread")]
    return blocks.bullets(key, ordered=True) if key else \
        blocks.Paragraph("No parameter varied across scored trials; nothing to compare.")


def issues_block(a: Analysis) -> blocks.Bullets:
    items = [f.text for f in a.findings if f.kind in ("failures", "divergence")]
    items += [f"loading: {w}" for w in a.warnings]
    if not a.record.found:
        items.append("no `speechtune_job.json`: ranked by `val_cer` (the default)")
    return blocks.bullets(items or ["none: every trial ran and reported its metrics"])


def critical_block(a: Analysis) -> blocks.Bullets:
    return blocks.bullets([f.text for f in a.findings if f.critical] or ["none"])


def decoding_blocks(a: Analysis) -> list:
    """``speechtune decode-tune``'s result (decode_tune.json), when it ran on this experiment."""
    path = a.local / "decode_tune.json"
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    pct = lambda i: f"{100 * i['rate']:.2f}% [{100 * max(i['low'], 0):.2f}, {100 * i['high']:.2f}]"  # noqa: E731
    rows = []
    for i, r in enumerate(d["ranked"], start=1):
        vs = "best" if i == 1 else f"{'**tied**' if r['tied_with_best'] else 'worse'} (P = {r['p_best_better']:.2f})"
        rows.append([str(i), f"`{r['checkpoint']}`", ", ".join(f"{k}={v}" for k, v in r["settings"].items()),
                     pct(r["cer_ci"]), pct(r["wer_ci"]), vs])
    out = [blocks.Heading("Decoding (speechtune decode-tune)"),
           blocks.Paragraph(f"{d['settings_tried']} decoding settings ({d['searcher']} search) over the top "
                            f"{d['top']} checkpoint(s), on {d['dev_utterances']} dev utterances. Acoustic passes: "
                            f"{d['acoustic_passes']} (each checkpoint's dev set once, cached) instead of "
                            f"{d['acoustic_passes_from_scratch']} decoding each setting from scratch."),
           blocks.table(["rank", "trial", "settings", "dev CER [95% CI]", "dev WER [95% CI]", "vs best"], rows)]
    t = d.get("test")
    if t:
        u = d["unit"]
        p = t[f"p_best_improves_{u}"]
        out.append(blocks.Paragraph(
            f"On the test split ({t['utterances']} utterances) the winning settings reach {u.upper()} "
            f"{pct(t[f'best_{u}'])} against {pct(t[f'baseline_{u}'])} with the checkpoint's own decoding "
            f"({', '.join(f'{k}={v}' for k, v in t['own']['settings'].items())}): probability of improvement "
            f"{p:.3f}, {'beyond' if p >= conf.SURE else 'not beyond'} the noise."))
    return out


def report_document(a: Analysis, plots: list[tuple[str, Path]], extra: dict | None,
                    compare: "Analysis | None" = None) -> blocks.Document:
    """One experiment's report as blocks (rendered to report.md and report.html)."""
    H, P = blocks.Heading, blocks.Paragraph
    doc = blocks.Document(f"Tuning report: {a.record.name or a.local.name}")
    doc.add(H("Summary"), blocks.bullets(summary_items(a, extra)),
            H(f"Ranking (by {a.metric}, {a.mode})"), ranking_table(a), P(STATUS_TEXT),
            H("Key findings"), findings_block(a), H("Technical issues"), issues_block(a),
            H("Critical findings"), critical_block(a),
            H("Next steps"), blocks.bullets(a.next_steps, ordered=True) if a.next_steps else None,
            *best_config_blocks(a), *decoding_blocks(a))
    if compare is not None:
        doc.add(H("Compared with another experiment"), compare_table(a, compare), *compare_config_blocks(a, compare))
    if plots:
        doc.add(H("Plots"), blocks.Figures(tuple(plots)))
    doc.add(P("Files: `trials.parquet` (one row per trial), `history.parquet` (one row per reported epoch), "
              "`report.html` (this report with its plots, one file)."))
    return doc


# ---------------------------------------------------------------- comparison

def compare_table(a: Analysis, b: Analysis) -> blocks.Table:
    ra, rb = a.best(), b.best()
    head = ["", f"this: `{a.record.name or a.local.name}`", f"other: `{b.record.name or b.local.name}`"]
    rows = [["trials", str(len(a.trials)), str(len(b.trials))],
            ["statuses", ", ".join(f"{n} {s}" for s, n in a.trials.status.value_counts().items()),
             ", ".join(f"{n} {s}" for s, n in b.trials.status.value_counts().items())]]
    for m in dict.fromkeys([a.metric, *a.shown_metrics(), *b.shown_metrics()]):
        va = ra.get(f"best_{m}") if ra is not None else math.nan
        vb = rb.get(f"best_{m}") if rb is not None else math.nan
        rows.append([f"best {m}", show(m, va), show(m, vb)])
    rows.append(["best trial", f"`{a.label(ra)}`" if ra is not None else "-",
                 f"`{b.label(rb)}`" if rb is not None else "-"])
    for k in ("cost_wall_s", "cost_cpu_s"):
        rows.append([k, _fmt(a.trials[k].sum() if k in a.trials else math.nan),
                     _fmt(b.trials[k].sum() if k in b.trials else math.nan)])
    return blocks.table(head, rows)


def compare_config_blocks(a: Analysis, b: Analysis) -> list:
    ra, rb = a.best(), b.best()
    ca = a.config_of(ra) if ra is not None else {}
    cb = b.config_of(rb) if rb is not None else {}
    diff = [(k, ca.get(k), cb.get(k)) for k in dict.fromkeys([*ca, *cb]) if _fmt(ca.get(k)) != _fmt(cb.get(k))]
    if not diff:
        return [blocks.Paragraph("The two best configurations are the same.")]
    return [blocks.Paragraph("Where the two best configurations differ:"),
            blocks.table(["parameter", "this", "other"], [[f"`{k}`", _fmt(x), _fmt(y)] for k, x, y in diff])]


# ---------------------------------------------------------------- writers

def write_report(exp_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 extra: dict | None = None, compare: str | os.PathLike | None = None) -> Path:
    """Write ``report.md``, ``report.html``, ``plots/``, ``trials.parquet``, ``history.parquet`` into
    ``out_dir`` (default: exp_dir; for an experiment in object storage the files are also uploaded
    next to it). ``compare``: another experiment to set beside this one."""
    return _write(analyse(exp_dir), out_dir, extra, compare)


def _write(a: Analysis, out_dir, extra: dict | None = None, compare=None) -> Path:
    """``write_report`` for an experiment already analysed. What ``speechtune tune`` recorded of
    the search's outcome (``outcome`` in the job record: test figures, best checkpoint, wall time,
    an interrupt) comes first, so that writing the report again loses none of it."""
    from analysis import plots as plotting
    from asr_core import storage as store

    extra = {**a.record.outcome, **(extra or {})}

    remote = a.exp if store.is_remote(a.exp) else None
    out = Path(out_dir or a.local)
    out.mkdir(parents=True, exist_ok=True)
    save_tables(a.trials, a.history, out)
    other = analyse(compare) if compare is not None else None
    figs = plotting.render(a.trials, a.history, a.record, [c.removeprefix("config/") for c in a.params], out) \
        if not a.trials.empty else []
    doc = report_document(a, figs, extra, other)
    path = out / "report.md"
    path.write_text(blocks.to_markdown(doc, out), encoding="utf-8")
    (out / "report.html").write_text(blocks.to_html(doc), encoding="utf-8")
    findings = [{"kind": f.kind, "text": f.text, "data": f.data, "critical": f.critical} for f in a.findings]
    (out / "report.json").write_text(json.dumps({"experiment": str(remote or a.local), "extra": extra or {},
                                                 "findings": findings, "next_steps": a.next_steps,
                                                 "warnings": a.warnings}, indent=1, default=str))
    if remote and out_dir is None:
        import pyarrow.fs as pafs

        fs, root = store.resolve(remote)
        for f in out.rglob("*"):
            if f.is_file() and (f.name.startswith(("report.", "trials.", "history.")) or f.parent.name == "plots"):
                pafs.copy_files(str(f), f"{root}/{f.relative_to(out).as_posix()}", destination_filesystem=fs)
    return path


def _conclusion(a: Analysis, winners: dict) -> str:
    """One line: what won, by how much over the runner-up, and what is carried forward."""
    ok = a.ranked()
    if ok.empty:
        return "no trial reported the metric; nothing carried forward."
    b = ok.iloc[0]
    chosen = ", ".join(f"`{k}` = {_fmt(c['value'])}" for k, c in winners.items()) or a.label(b)
    if len(ok) == 1:
        return f"{chosen} (only trial, {a.metric} {_fmt(b[f'best_{a.metric}'])})."
    second = ok.iloc[1]
    vb, vs = float(b[f"best_{a.metric}"]), float(second[f"best_{a.metric}"])
    rel = abs(vs - vb) / max(abs(vs), 1e-12)
    if rel < ins.SAME:
        return (f"{chosen} kept, but it makes little or no difference: {a.metric} {_fmt(vb)} against "
                f"{_fmt(vs)} for `{a.label(second, values=True)}` ({rel:.2%}).")
    return (f"{chosen} is best: {a.metric} {_fmt(vb)} against {_fmt(vs)} for the runner-up "
            f"`{a.label(second, values=True)}` ({rel:.1%} {'lower' if vb < vs else 'higher'}); carried forward.")


def phase_blocks(name: str, ph: dict, a: Analysis | None, index: int) -> list:
    """Seed 002's form: the phase's question, its settings with ``<OPT>`` resolved, each trial with
    its result, and a one-line conclusion."""
    P = blocks.Paragraph
    out: list = [blocks.Heading(f"Phase {index}: {name}", 3)]
    if a is None:
        return out + [P(f"_Status: {ph.get('status')}; not run to the end._")]
    rec = a.record
    desc = rec.phase.get("description")
    if desc:
        out.append(P(desc))
    carried = rec.phase.get("carried") or {}
    fixed = {k: v for k, v in (rec.job.get("params") or {}).items()
             if not isinstance(v, (dict, list)) and k not in rec.tuned}
    sett = [f"`{k}={_fmt(v)}`" + (" (<OPT> from `" + carried[k]["phase"] + "`)" if k in carried else "")
            for k, v in fixed.items()]
    if sett:
        out.append(P("Fixed: " + ", ".join(sett)))
    if rec.search_space:
        out.append(P("Searched: " + ", ".join(f"`{k}`: {v}" for k, v in rec.search_space.items())))
    tried = []
    for _, r in a.trials.iterrows():
        keys = [c for c in a.params if c != "config/experiment"]
        what = ", ".join(f"`{c.removeprefix('config/')}={_fmt(r[c])}`" for c in keys)
        res = (f"{a.metric}: {_fmt(r[f'best_{a.metric}'])}" if r.status not in CANNOT_WIN
               else f"{r.status.upper()}: {str(r.error)[:100]}")
        tried.append(f"[X] {what or a.label(r)} (_{res}_)")
    if tried:
        out.append(blocks.bullets(tried))
    return out + [P(f"_Conclusion: {_conclusion(a, ph.get('winners') or {})}_"),
                  P(f"[Full report of phase `{name}`]({name}/report.html)")]


def write_study_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """A staged study: each phase's report (``PHASE/report.md|html``), ``study.md`` with the
    methodology (every phase in seed 002's form) and a study summary, and ``index.html``."""
    from asr_core import storage as store

    text = store.read_text(store.join(str(study_dir), "study.json"))
    if text is None:
        raise FileNotFoundError(f"no study.json in {study_dir}")
    state = json.loads(text)
    local = store.local_copy(study_dir) if store.is_remote(study_dir) else Path(study_dir)
    out = Path(out_dir or local)
    out.mkdir(parents=True, exist_ok=True)
    method, summary, final, bests = [], [], {}, []
    for i, (name, ph) in enumerate(state.get("phases", {}).items(), start=1):
        if ph.get("status") != "done":
            method += phase_blocks(name, ph, None, i)
            summary.append([f"{i}. `{name}`", "-", str(ph.get("status")), "-"])
            continue
        a = analyse(ph["exp"])  # once: for the phase's own report and for the methodology
        _write(a, out / name)
        method += phase_blocks(name, ph, a, i)
        best = ph["best"]
        bests.append(best)
        chosen = ", ".join(f"`{k}`={_fmt(c['value'])}" for k, c in (ph.get("winners") or {}).items())
        final.update({k: c for k, c in (ph.get("winners") or {}).items()})
        summary.append([f"{i}. [`{name}`]({name}/report.md)", str(ph.get("trials")),
                        f"{best['metric']} {_fmt(best['value'])} (trial `{best['trial']}`)", chosen or "-"])
    doc = blocks.Document(f"Study: {state.get('study')}")
    doc.add(blocks.Heading("Methodology"),
            blocks.Paragraph("Each phase tunes a few settings with the winners of the phases before it fixed "
                             "(`<OPT>` below is resolved to the value carried in, with the phase it came from)."),
            *method, blocks.Heading("Study summary"),
            blocks.table(["phase", "trials", "best", "chosen (carried forward)"], summary))
    if len(bests) >= 2:
        doc.add(blocks.Paragraph(f"Best {bests[0]['metric']} {_fmt(bests[0]['value'])} in the first phase, "
                                 f"{_fmt(bests[-1]['value'])} in the last."))
    if final:
        doc.add(blocks.Paragraph("Final configuration (each value with the phase that chose it):"),
                blocks.Code("\n".join(f"{k}: {_fmt(c['value'])}  # phase {c['phase']}, trial {c['trial']}"
                                      for k, c in final.items()), "yaml"))
    path = out / "study.md"
    path.write_text(blocks.to_markdown(doc, out), encoding="utf-8")
    links = {f"{name}/report.md": f"{name}/report.html" for name in state.get("phases", {})}
    (out / "index.html").write_text(blocks.to_html(doc, links), encoding="utf-8")
    return path
