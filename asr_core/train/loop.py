"""The per-worker training loop, the same for every family (icefall's split of the loop).

Runs inside a Ray Train worker (``train_loop_per_worker``): each worker reads its own shard of
length-bucketed batches, gradients are averaged by DDP (gloo on CPU, NCCL on GPU), validation
counts are summed over workers, and every epoch reports metrics and a checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from asr_core.data.batching import SpeechDataset, shard
from asr_core.models import Family, get_family
from asr_core.train import checkpoint as ckpt
from asr_core.train.config import RunConfig, TrainConfig, split_params
from asr_core.train.data import RunData, duration_limit, prepare_data
from asr_core.train.schedules import Schedule, make_optimizer  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if _world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def _all_gather(items: list) -> list:
    """Every worker's list, concatenated (the same on every worker)."""
    if _world()[1] <= 1:
        return list(items)
    out: list = [None] * _world()[1]
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


class Diverged(Exception):
    """The training loss or the gradient became NaN or infinite."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} at step {step}")
        self.step, self.value = step, value


@dataclass
class StepState:
    """What the loop carries between batches and epochs (and into checkpoints)."""
    step: int = 0  # optimizer steps taken
    best: float = float("nan")  # best select_metric so far
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best (early stopping)
    target_step: float = float("nan")  # steps_to_target once reached
    auc: float = 0.0  # area under the select_metric curve so far (sum over epochs, width 1 epoch)
    extra: dict = field(default_factory=dict)


def amp_context(cfg: TrainConfig, device: torch.device):
    if not cfg.amp:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def train_one_epoch(model, family: Family, data: SpeechDataset, batches, optimizer, schedule: Schedule,
                    cfg: TrainConfig, state: StepState, scaler=None) -> tuple[float, int]:
    """One pass over this worker's batches; returns (summed loss, utterances) of this worker.

    Gradients are accumulated over ``accum_grad`` batches (DDP syncs only on the last one). A
    non-finite gradient norm (identical on every worker after DDP's all-reduce, so all workers
    stop together) or loss raises ``Diverged``.
    """
    model.train()
    total, n = 0.0, 0
    device = next(model.parameters()).device
    accum = cfg.accum_grad
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(data.iterate(batches, prefetch=cfg.prefetch, pin=device.type == "cuda")):
        batch = batch.to(device)
        sync = (i + 1) % accum == 0 or i + 1 == len(batches)
        no_sync = getattr(model, "no_sync", None)
        with (contextlib.nullcontext() if sync or no_sync is None else no_sync()):
            with amp_context(cfg, device):
                loss, count = family.compute_loss(model, batch)
            scaled = loss / count / accum
            (scaler.scale(scaled) if scaler else scaled).backward()
        total += float(loss.detach())
        n += count
        if not sync:
            continue
        if scaler:
            scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if not torch.isfinite(norm) and scaler is None:
            raise Diverged(state.step + 1, float(loss.detach()) if not torch.isfinite(loss) else float(norm))
        if scaler:
            scaler.step(optimizer)  # skips the step on inf gradients and lowers the scale
            scaler.update()
            if scaler.get_scale() < 1e-6:
                raise Diverged(state.step + 1, float(loss.detach()))
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        state.step += 1
    return total, n


@torch.no_grad()
def compute_validation_loss(model, family: Family, data: SpeechDataset, batches, tokenizer,
                            with_lang_tag: bool = False, edits: list | None = None) -> dict:
    """Loss and the family's counts over this worker's validation batches, summed across workers.
    ``edits`` (a list) gets every worker's per-utterance edit counts (ASR families), by id."""
    model.eval()
    inner = getattr(model, "module", model)  # decode without DDP's forward hooks
    counts: dict[str, float] = {"loss_sum": 0.0, "loss_n": 0.0}
    mine: list = []
    device = next(inner.parameters()).device
    for batch in data.iterate(batches):
        batch = batch.to(device)
        loss, count = family.compute_loss(inner, batch)
        counts["loss_sum"] += float(loss)
        counts["loss_n"] += count
        for k, v in family.counts(inner, batch, tokenizer, with_lang_tag, mine).items():
            counts[k] = counts.get(k, 0.0) + float(v)
    if edits is not None:
        edits += sorted(_all_gather(mine))
    keys = sorted(counts)  # same order on every worker
    counts = dict(zip(keys, _all_sum([counts[k] for k in keys])))
    n = counts.pop("loss_n")
    return {"val_loss": counts.pop("loss_sum") / n if n else float("nan"), **family.metrics(counts)}


def _improved(value: float, best: float, mode: str, min_delta: float) -> bool:
    if value != value:
        return False
    if best != best:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _passed(value: float, target: float, mode: str) -> bool:
    return value == value and (value <= target if mode == "min" else value >= target)


def restore_case(cfg: TrainConfig, meta: dict, trial_id: str | None, experiment: str | None) -> str:
    """Which of the three ways a checkpoint is taken up:

    - ``continue``: the run's own checkpoint (a retried worker, a resumed experiment);
    - ``exploit``: another trial of this search wrote it (PBT's exploit, or ``speechtune train
      --resume-from``): its epochs go on, with this run's hyperparameters;
    - ``finetune``: another experiment wrote it and ``finetune`` is set (a study's ``init_from``):
      weights and optimizer moments only; epochs, schedule and early stopping start afresh.
    """
    origin = meta.get("trial_id") or ""
    if origin and origin == (trial_id or ""):
        return "continue"
    other_experiment = not (meta.get("experiment") and meta.get("experiment") == experiment)
    return "finetune" if cfg.finetune and other_experiment else "exploit"


def apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """This run's optimizer settings on every param group, over what a loaded optimizer state
    brought back (PBT mutations of ``weight_decay`` or ``momentum`` take effect). ``lr`` is the
    schedule's (``Schedule.rebase``); loss weights and dropout live in the model config the
    model was built from, so they are this run's already."""
    for g in optimizer.param_groups:
        g["weight_decay"] = 0.0 if g.get("no_decay") else cfg.weight_decay
        if "momentum" in g:
            g["momentum"] = cfg.momentum


def run_epochs(run: RunConfig, family: Family, data: RunData, report, checkpoint_state: dict | None,
               rank: int = 0, world: int = 1, wrap_model=lambda m: m, checkpoint_meta: dict | None = None,
               trial_id: str | None = None, experiment: str | None = None) -> None:
    """The epochs of one run: train, validate, report ``(metrics, checkpoint_writer)`` each epoch.
    ``report(metrics, save)`` is Ray Train's report (``save(dir)`` writes a checkpoint into dir)
    or any callable in tests and benchmarks; everything Ray-specific stays in the caller. A
    checkpoint to start from is taken up in one of the three ways of ``restore_case``; the first
    report after a restore names the trial and epoch the checkpoint came from."""
    cfg, tok = run.train, data.tokenizer
    model = family.build(run.model, tok.vocab_size, run.features.n_mels)
    n_params = sum(p.numel() for p in model.parameters())  # reported: the analysis sets size against metric
    train_batches, dev_batches, steps_per_epoch = _batches(run, family, data, rank, world)
    optimizer = _optimizer_for(model, cfg, checkpoint_state)
    # the pair that picks the best epoch, early-stops and keeps checkpoints: the job's (runner
    # sets it from the job's metric and mode), else the family's default
    metric = cfg.select_metric or family.default_metric
    mode = cfg.select_mode or family.metric(metric).mode
    new_schedule = functools.partial(Schedule, optimizer, cfg, steps_per_epoch * cfg.epochs, steps_per_epoch, mode=mode)
    schedule, state, start_epoch, restored = (new_schedule(), StepState(), 1, {}) if checkpoint_state is None else \
        _take_up(checkpoint_state, checkpoint_meta or {}, cfg, model, optimizer, new_schedule, trial_id, experiment)
    model = wrap_model(model)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and next(model.parameters()).device.type == "cuda" else None

    cpu0 = time.process_time()  # this worker's CPU seconds (all threads) since the last report
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        try:
            loss_sum, n = _train_epoch(model, family, data, train_batches, optimizer, schedule, cfg, state, scaler,
                                       rank, world, epoch)
        except Diverged as d:
            # the trial ends "diverged" (analysis.load reads these keys), with no checkpoint of it
            report({"epoch": epoch, "diverged": 1, "diverged_step": d.step, "diverged_value": str(d.value),
                    "train_loss": float("nan"), "val_loss": float("nan"), metric: float("nan"), **restored}, None)
            return
        train_time = time.perf_counter() - t0
        loss_sum, n = _all_sum([loss_sum, n])
        edits: list = []
        val = compute_validation_loss(model, family, data.dev, dev_batches, tok, run.data.with_lang_tag, edits)
        _after_validation(state, val, epoch, cfg, metric, mode, family)
        schedule.epoch_end(val.get(metric, float("nan")))
        cpu_now = time.process_time()
        cpu_s, cpu0 = _all_sum([cpu_now - cpu0])[0], cpu_now
        stop = bool(cfg.early_stop_patience) and state.bad_epochs >= cfg.early_stop_patience
        metrics = {"epoch": epoch, "step": state.step, "train_loss": loss_sum / n if n else float("nan"), **val,
                   f"best_{metric}": state.best, "best_epoch": state.best_epoch,
                   "epoch_time_s": time.perf_counter() - t0,
                   "utts_per_s": n / train_time if train_time > 0 else float("nan"),
                   "lr": optimizer.param_groups[0]["lr"],
                   f"{metric}_auc": state.auc if state.best == state.best else float("nan"),
                   "cpu_s": cpu_s,  # CPU seconds all workers used since the previous report
                   "model_params": n_params, **restored,
                   **({"steps_to_target": state.target_step} if cfg.target_metric else {}),
                   **({"early_stop": 1} if stop else {})}
        restored = {}
        save = _saver(getattr(model, "module", model), optimizer, schedule, epoch, run, data, metrics,
                      dataclasses.asdict(state), edits, trial_id, experiment)
        report(metrics, save if rank == 0 else None)
        if stop:
            return


def _batches(run: RunConfig, family: Family, data: RunData, rank: int, world: int):
    """(this worker's training batches before sharding, its share of the dev batches, optimizer
    steps an epoch)."""
    cfg = run.train
    padding = family.pads(run.model)  # wavenet_ctc (seed 002) can batch without padding
    train_batches = data.train.batches(cfg.batch_bins, cfg.batch_size, padding=padding)
    dev_batches = shard(data.dev.batches(cfg.batch_bins, cfg.batch_size, padding=padding), rank, world, 0, 0,
                        shuffle=False)
    per_worker = len(train_batches) // world if len(train_batches) >= world else len(train_batches)
    return train_batches, dev_batches, max(1, math.ceil(per_worker / cfg.accum_grad))


def _saver(model, optimizer, schedule: Schedule, epoch: int, run: RunConfig, data: RunData, metrics: dict,
           loop: dict, edits: list, trial_id: str | None, experiment: str | None):
    """The checkpoint writer of this epoch (Ray Train calls it with a directory): everything a
    resumed run needs, as of now (the loop state is copied when it is made)."""
    def save(d: str) -> None:
        ckpt.save(d, model=model, optimizer=optimizer, scheduler=schedule, epoch=epoch, run=run,
                  tokenizer=data.tokenizer, mean=data.train.mean, std=data.train.std, metrics=metrics, loop=loop,
                  trial_id=trial_id, experiment=experiment, edits=edits)
    return save


def _train_epoch(model, family: Family, data: RunData, train_batches, optimizer, schedule: Schedule,
                 cfg: TrainConfig, state: StepState, scaler, rank: int, world: int, epoch: int) -> tuple[float, int]:
    """One epoch of training on this worker's shard. Its random draws (dropout) come from (seed,
    epoch), as fairseq seeds each update: a run restored from a checkpoint (a paused trial
    resumed, a retried worker) draws what the same run straight through would have drawn."""
    torch.manual_seed(cfg.seed * 1_000_003 + epoch)
    mine = shard(train_batches, rank, world, cfg.seed, epoch)
    epoch_data = data.train.for_epoch(cfg.seed, epoch)  # augmented versions and masks of this epoch
    return train_one_epoch(model, family, epoch_data, mine, optimizer, schedule, cfg, state, scaler)


def _optimizer_for(model, cfg: TrainConfig, checkpoint_state: dict | None) -> torch.optim.Optimizer:
    """The run's optimizer. A checkpoint written before biases and norms had their own group
    holds one group's state: the optimizer is built as it was then (every parameter decays), so
    that its state loads."""
    saved = (checkpoint_state or {}).get("optimizer", {}).get("param_groups")
    optimizer = make_optimizer(model, cfg)
    if saved is not None and len(saved) != len(optimizer.param_groups):
        optimizer = make_optimizer(model, cfg, split=False)
    return optimizer


def _take_up(checkpoint_state: dict, meta: dict, cfg: TrainConfig, model, optimizer, new_schedule,
             trial_id: str | None, experiment: str | None):
    """Load a checkpoint into the model and the optimizer, in the way of ``restore_case``:
    continue (schedule, loop state and epoch as saved), exploit (the same, with PBT's mutated
    rate) or finetune (weights and moments only; a new schedule from epoch 1). Returns
    (schedule, loop state, first epoch, the keys the first report carries)."""
    case = restore_case(cfg, meta, trial_id, experiment)
    # built before the optimizer's state loads: a LambdaLR's first step sets each group's rate,
    # which the loaded state then puts back to the saved one
    schedule = new_schedule()
    model.load_state_dict(checkpoint_state["model"])
    optimizer.load_state_dict(checkpoint_state["optimizer"])
    restored = {"restored_from_trial": meta.get("trial_id") or "",
                "restored_from_epoch": int(checkpoint_state["epoch"])}
    apply_hyperparameters(optimizer, cfg)  # load_state_dict brought back the writer's values
    if case == "finetune":
        for g in optimizer.param_groups:  # the new stage's rate; Adam's moments are kept
            g["lr"] = g["initial_lr"] = cfg.lr
        return new_schedule(), StepState(), 1, restored
    schedule.load_state_dict(checkpoint_state["scheduler"])
    if case == "exploit" and float(meta.get("params", {}).get("lr", cfg.lr)) != cfg.lr:
        schedule.rebase(cfg.lr)  # PBT mutated the rate: the schedule keeps its position
    return schedule, StepState(**checkpoint_state.get("loop", {})), int(checkpoint_state["epoch"]) + 1, restored


def _after_validation(state: StepState, val: dict, epoch: int, cfg: TrainConfig, metric: str, mode: str,
                      family: Family) -> None:
    """The loop's state after an epoch's validation: best value and epoch, epochs without
    improvement (early stopping), the step the target was first passed at, the metric's sum (AUC)."""
    target_mode = family.metric(cfg.target_metric).mode if cfg.target_metric else "min"
    value = val.get(metric, float("nan"))
    if _improved(value, state.best, mode, cfg.early_stop_min_delta):
        state.best, state.best_epoch, state.bad_epochs = value, epoch, 0
    else:
        state.bad_epochs += 1
    if cfg.target_metric and state.target_step != state.target_step \
            and _passed(val.get(cfg.target_metric, float("nan")), cfg.target_value, target_mode):
        state.target_step = float(state.step)
    if value == value:
        state.auc += value


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. ``config`` is the run's flat parameter dict (plus family/preset)."""
    import ray.train
    import ray.train.torch

    run: RunConfig = split_params(config, where="trial config")
    family = get_family(run.family)
    ctx = ray.train.get_context()
    torch.manual_seed(run.train.seed)
    # no audio is opened here: this node may not see it; the driver checked it and built the features
    limit = duration_limit(run.data, run.features, run.train.batch_bins, run.train.batch_size)
    data = prepare_data(run.data, run.features, progress=False, check_audio=False, max_duration=limit,
                        augment=run.augment)
    restored = ray.train.get_checkpoint()
    state = meta = None
    note = ""
    if restored is not None:  # a broken one is named and skipped (issue 25's truncated checkpoint)
        state, meta, note = ckpt.restore_intact(restored)
        if note and ctx.get_world_rank() == 0:
            log.warning("%s", note)

    # how many nodes this trial's workers run on (reported: placement across nodes is visible in
    # the results, and a trial retried after losing a node shows it)
    nodes = [ray.get_runtime_context().get_node_id()]
    if ctx.get_world_size() > 1:
        gathered: list = [None] * ctx.get_world_size()
        torch.distributed.all_gather_object(gathered, nodes[0])
        nodes = gathered
    num_nodes = len(set(nodes))

    # the note on what was broken goes with the first report: the driver prints it
    # (tune_jobs.restarts; worker logs reach no driver) and result.json keeps it
    notes = [note] if note else []

    def report(metrics: dict, save) -> None:
        metrics = {**metrics, "num_nodes": num_nodes, **({"restore_note": notes.pop()} if notes else {})}
        if save is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save(tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    run_epochs(run, family, data, report, state, ctx.get_world_rank(), ctx.get_world_size(),
               wrap_model=ray.train.torch.prepare_model,  # DDP when world > 1; moves to the device
               checkpoint_meta=meta, trial_id=ctx.get_trial_id(), experiment=ctx.get_experiment_name())
