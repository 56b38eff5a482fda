"""crnn_ctc learns; the Ray Train loop reports every epoch and resumes at the next one."""
from __future__ import annotations

import json

import pytest
import torch

from asr_core.models import FAMILIES, get_family
from asr_core.train.config import split_params
from asr_core.train.data import prepare_data
from tests.factories import make_params
from tune_jobs.runner import run_train
from tune_jobs.spec import ResourcesSpec


def test_registry():
    assert "crnn_ctc" in FAMILIES and FAMILIES["crnn_ctc"].name == "crnn_ctc"
    with pytest.raises(ValueError, match="unknown family: nope"):
        get_family("nope")


def test_crnn_ctc_loss_falls_when_overfitting_a_small_batch(corpus, cache_dir):
    torch.manual_seed(0)
    run = split_params(make_params(corpus, cache_dir, max_train_utts=8))
    fam = get_family("crnn_ctc")
    data = prepare_data(run.data, run.features, progress=False)
    model = fam.build(run.model, data.tokenizer.vocab_size, run.features.n_mels)
    batch = data.train.collate(list(range(8)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, n = fam.compute_loss(model, batch)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
        losses.append(float(loss.detach()) / n)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


RAY_TABLES = ("╭", "Trial Status", "== Status ==", "Current time:", "Training started with configuration")


def test_ddp_training_reports_every_epoch_and_resumes_at_next_epoch(corpus, cache_dir, tmp_path, ray_start_2_cpus,
                                                                    capfd):
    params = make_params(corpus, cache_dir, epochs=2)
    res = ResourcesSpec(num_workers=2, cpus_per_worker=1)
    first = run_train(params, res, str(tmp_path), "first")
    df = first.metrics_dataframe
    assert df["epoch"].tolist() == [1, 2]
    # a line per epoch in place of Ray's tables (`speechtune train` printed them in full)
    printed = capfd.readouterr()
    lines = [ln for ln in printed.out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"] and "val_cer " in lines[-1], printed.out
    assert not [t for t in RAY_TABLES if t in printed.out + printed.err], printed.out[-3000:]
    for key in ("train_loss", "val_loss", "val_cer", "val_wer", "epoch_time_s", "utts_per_s"):
        assert df[key].notna().all(), key
    ckpt = first.checkpoint.path
    meta = json.loads(open(f"{ckpt}/meta.json").read())
    assert meta["epoch"] == 2
    # each dev utterance's edit counts, gathered from both DDP workers (each decoded half): every
    # utterance once, and they add up to the CER the epoch reported
    edits = json.loads(open(f"{ckpt}/edits.json").read())
    dev_ids = [json.loads(line)["id"] for line in open(corpus["dev"]) if line.strip()]
    assert sorted(edits["ids"]) == sorted(dev_ids) and edits["epoch"] == 2
    assert sum(e for e, _ in edits["char"]) / sum(n for _, n in edits["char"]) == \
        pytest.approx(df["val_cer"].iloc[-1])

    resumed = run_train({**params, "epochs": 4}, res, str(tmp_path), "resumed", resume_from=ckpt, progress=False)
    df2 = resumed.metrics_dataframe
    assert df2["epoch"].tolist() == [3, 4]  # continues, does not restart at 1
    # the restored model is the trained one: its first loss is far below a fresh model's
    assert df2["train_loss"].iloc[0] < df["train_loss"].iloc[0]


@pytest.mark.parametrize("family", ["crnn_ctc", "conformer_aed"])
def test_biases_and_norm_gains_take_no_weight_decay_unless_asked(family):
    """nanoGPT's rule in make_optimizer: matrices and kernels decay, every parameter of fewer than
    2 dimensions (biases, LayerNorm/BatchNorm gains) does not; a PBT mutation of weight_decay
    leaves that group at 0; `decay_bias_and_norm: true` is one group, as before; and a
    checkpoint of one group (written before the split) loads into the run that resumes it."""
    from asr_core.train.config import TrainConfig
    from asr_core.train.loop import apply_hyperparameters
    from asr_core.train.schedules import make_optimizer

    fam = get_family(family)
    tiny = {k: v for k, v in fam.presets["tiny"].items() if k in fam.config_keys()}  # the model's keys
    model = fam.build(fam.make_config(tiny), 30, 40)
    cfg = TrainConfig(optimizer="adamw", weight_decay=0.1)
    opt = make_optimizer(model, cfg)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0 and no_decay["no_decay"]
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    norms = [m.weight for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm1d,
                                                                 torch.nn.BatchNorm2d))]
    assert norms and all(any(w is p for p in no_decay["params"]) for w in norms)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    apply_hyperparameters(opt, TrainConfig(optimizer="adamw", weight_decay=0.3))  # a PBT mutation
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]
    one = make_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.1, decay_bias_and_norm=True))
    assert [g["weight_decay"] for g in one.param_groups] == [0.1]
    # one step of the one-group optimizer, saved; a split optimizer cannot load it, the fallback can
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    one.step()
    with pytest.raises(ValueError):
        make_optimizer(model, cfg).load_state_dict(one.state_dict())
    make_optimizer(model, cfg, split=False).load_state_dict(one.state_dict())
