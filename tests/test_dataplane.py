"""The data plane on one node: the feature store built by Ray tasks once per job and read from
object storage, errors that keep their type across Ray, a search that produced nothing exiting
non-zero, and the background batch pipeline."""
from __future__ import annotations

import json
import os
import pickle
import threading

import numpy as np
import pytest

from asr_core.data.features import FeatureConfig, compute_fbank, ensure_store, load_audio, open_store
from asr_core.data.manifest import read_manifest
from asr_core.errors import InputError
from tests.factories import make_params, speechtune, tiny_job


def test_input_error_keeps_type_and_message_across_ray(ray_start_2_cpus, tmp_path):
    ray = ray_start_2_cpus
    e = pickle.loads(pickle.dumps(InputError("a.jsonl:3", "audio file not found")))
    assert (e.where, e.message, str(e)) == ("a.jsonl:3", "audio file not found", "a.jsonl:3: audio file not found")
    missing = str(tmp_path / "nowhere.jsonl")
    with pytest.raises(InputError) as info:  # raised in a Ray worker process, caught here by its own type
        ray.get(ray.remote(read_manifest).remote(missing))
    assert info.value.where == missing and info.value.message == "manifest not found"


def test_feature_store_is_built_by_ray_tasks_once_and_read_back_from_s3(corpus, tmp_path, s3_server,
                                                                        ray_start_2_cpus, monkeypatch):
    env, s3 = s3_server  # the shared head's processes (so every Ray task) have these too, as nodes do
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _store_round_trip(corpus, tmp_path, s3)


def _store_round_trip(corpus, tmp_path, s3):
    m = read_manifest(corpus["train"])
    cfg = FeatureConfig(n_mels=40)
    root = "s3://speech/features-test"
    entry, extracted = ensure_store(m, cfg, root, progress=False, parallel=True)  # Ray tasks, one shard each
    assert extracted == len(m) and entry.startswith(root)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="speech", Prefix="features-test/")["Contents"]]
    parts = [k for k in keys if "/part-" in k]
    assert len(parts) >= 2 and any(k.endswith("/index.json") for k in keys)  # several shards, in parallel
    again, extracted2 = ensure_store(m, cfg, root, progress=False, parallel=True)  # a second job: nothing to do
    assert again == entry and extracted2 == 0

    node = tmp_path / "node-cache"
    store = open_store(entry, node)
    assert len(store) == len(m) and store.feats(0).dtype == np.float16 and not store.feats(0).flags.owndata
    mtime = os.stat(node / "features" / entry.rsplit("/", 1)[1] / "feats.arrow").st_mtime_ns
    open_store(entry, node)  # another worker on this node: no second download
    assert os.stat(node / "features" / entry.rsplit("/", 1)[1] / "feats.arrow").st_mtime_ns == mtime
    # float16 storage: the error it adds to the log-mel values is rounding, at most 2^-11 relative
    for i in (0, 7, len(m) - 1):
        import torch

        u = m.utterances[i]
        wav, sr = load_audio(u)
        exact = compute_fbank(torch.from_numpy(wav), sr, cfg).numpy()
        stored = store.feats(store.index[u.id]).astype(np.float32)
        assert stored.shape == exact.shape
        assert np.all(np.abs(stored - exact) <= np.abs(exact) * 2.0**-11 + 1e-6)
    stats = json.loads((node / "features" / entry.rsplit("/", 1)[1] / "stats.json").read_text())
    assert len(stats["mean"]) == 40 and stats["frames"] == int(store.num_frames.sum())


def test_search_in_which_every_trial_fails_exits_nonzero_with_the_first_error(corpus, cache_dir, tmp_path,
                                                                              ray_address):
    """A combination the trial's worker refuses: attention_heads 6 does not divide hidden_dim 100,
    though each value alone passes the job's load-time check (every value of every dimension over
    the others' first values; a combination of two non-first values is the worker's to find; a
    point to evaluate is parsed whole at load). Seed 0 draws that combination first, and there is
    no baseline to run before it (the preset's hidden_dim 144 is outside the choices). The
    InputError reaches the driver with its type and message, and the CLI exits 1 saying so."""
    job = tiny_job(tmp_path, corpus, cache_dir, "allfail", """\
        num_trials: 1
        search_space: {hidden_dim: {choice: [96, 100]}, attention_heads: {choice: [4, 6]}}
        searcher: {name: random, seed: 0}
        """, epochs=1, edit={"family": "conformer_aed", "preset": "cpu_small"})
    p = speechtune("tune", str(job), "--address", ray_address)
    out, _ = p.communicate(timeout=400)
    assert p.returncode == 1, out[-3000:]
    last = out.strip().splitlines()[-2:]
    assert "the search produced nothing: no trial of 1 reported val_loss (1 failed)" in last[0], out[-3000:]
    assert last[1].startswith("first error: InputError: trial config: key 'attention_heads' (6) must divide "
                              "'hidden_dim' (100)"), last


def test_background_batches_equal_the_inline_ones_and_errors_surface(corpus, cache_dir):
    from asr_core.train.config import split_params
    from asr_core.train.data import prepare_data

    run = split_params(make_params(corpus, cache_dir))
    data = prepare_data(run.data, run.features, progress=False)
    batches = data.train.batches(60_000)
    inline = list(data.train.iterate(batches, prefetch=0))
    ahead = list(data.train.iterate(batches, prefetch=3))
    assert len(inline) == len(ahead) == len(batches) > 3
    for a, b in zip(inline, ahead):
        assert a.ids == b.ids and np.array_equal(a.feats.numpy(), b.feats.numpy())
    # leaving early stops the producer thread; an error in it is raised in the consumer
    it = data.train.iterate(batches, prefetch=2)
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name == "batch-prefetch"]
    with pytest.raises(IndexError):
        list(data.train.iterate([[0], [10**9]], prefetch=2))
