"""Augmentation (asr_core.data.augment): each kind changes training batches and never dev or test
batches; speed perturbation changes the number of frames by its factor; everything is the same
again under the same seeds and different under another."""
from __future__ import annotations

import numpy as np
import pytest

from asr_core.data.manifest import read_manifest
from asr_core.errors import InputError
from asr_core.train.config import split_params
from asr_core.train.data import dataset_for, prepare_data
from tests.factories import make_params

KINDS = {
    "speed": {"aug_copies": 2, "speed_perturb": [0.8, 1.25]},
    "noise": {"aug_copies": 1, "noise_snr": [5.0, 10.0], "noise_types": ["white", "pink"]},
    "reverb": {"aug_copies": 1, "reverb_prob": 1.0},
    "vtlp": {"aug_copies": 1, "vtlp": [0.85, 0.9]},
    "specaug": {"specaug": True},
}


def _data(corpus, cache_dir, **aug):
    run = split_params(make_params(corpus, cache_dir, max_train_utts=40, **aug))
    return run, prepare_data(run.data, run.features, progress=False, augment=run.augment)


def _batches(ds, n=3):
    plan = ds.batches(60_000)[:n]
    return [ds.collate(b) for b in plan]


def _same(a, b) -> bool:
    return all(x.feats.shape == y.feats.shape and np.array_equal(x.feats.numpy(), y.feats.numpy())
               for x, y in zip(a, b))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_augmentation_changes_training_batches_and_never_dev_or_test(kind, corpus, cache_dir):
    _, clean = _data(corpus, cache_dir)
    run, aug = _data(corpus, cache_dir, **KINDS[kind])
    # the epoch's view of the training set differs from the clean one ...
    plan = aug.train.batches(60_000)[:3]
    seen = [aug.train.for_epoch(0, e) for e in (1, 2)]
    assert not _same([seen[0].collate(b) for b in plan], [clean.train.collate(b) for b in plan])
    # ... and from one epoch to the next (a new draw of versions, new masks)
    assert not _same([seen[0].collate(b) for b in plan], [seen[1].collate(b) for b in plan])
    # dev batches are the clean ones, epoch view or not
    assert _same(_batches(aug.dev), _batches(clean.dev))
    assert aug.dev.for_epoch(0, 1) is aug.dev
    # a test set scored by the trained model (evaluate's path) reads clean features
    test_m = read_manifest(corpus["test"])
    kw = dict(tok=aug.tokenizer, feats=run.features, cache_dir=str(cache_dir), mean=aug.train.mean,
              std=aug.train.std, with_lang_tag=False, progress=False)
    assert len(dataset_for(test_m, **kw).versions) == 1
    assert _same(_batches(dataset_for(test_m, **kw)),
                 _batches(dataset_for(test_m, **{**kw, "mean": clean.train.mean, "std": clean.train.std})))


def test_speed_perturbation_changes_frames_by_its_factor(corpus, cache_dir):
    _, clean = _data(corpus, cache_dir)
    _, aug = _data(corpus, cache_dir, **KINDS["speed"])
    ds = aug.train
    factors = set()
    for version in ds.versions[1:]:
        store = version[0][0]
        for i, u in enumerate(ds.utts):
            factor = store.perturbations[u.id]["speed"]
            factors.add(factor)
            n_clean, n_aug = clean.train.frames[i], version[i][2]
            assert n_aug == pytest.approx(n_clean / factor, abs=2), (u.id, factor, n_clean, n_aug)
    assert factors == {0.8, 1.25}
    # batches are planned on each utterance's longest version: every version fits batch_bins
    for b in ds.batches(60_000):
        for v in ds.versions:
            assert len(b) * max(v[i][2] for i in b) * 40 <= 60_000 + 40 * 400 or len(b) == 1


def test_augmentation_is_reproducible_under_its_seeds(corpus, cache_dir):
    everything = {**KINDS["speed"], "noise_snr": [5.0, 10.0], "reverb_prob": 0.5, "specaug": True}
    _, a = _data(corpus, cache_dir, **everything)
    _, b = _data(corpus, cache_dir, **everything)
    plan = a.train.batches(60_000)[:4]
    assert _same([a.train.for_epoch(3, 2).collate(x) for x in plan], [b.train.for_epoch(3, 2).collate(x) for x in plan])
    # another run seed draws other versions and masks; another aug_seed makes other copies
    assert not _same([a.train.for_epoch(3, 2).collate(x) for x in plan],
                     [a.train.for_epoch(4, 2).collate(x) for x in plan])
    _, c = _data(corpus, cache_dir, **everything, aug_seed=1)
    assert [s[0][0].perturbations != t[0][0].perturbations for s, t in zip(a.train.versions[1:], c.train.versions[1:])] \
        == [True, True]


def test_bad_augmentation_keys_are_named(corpus, cache_dir):
    for bad, key in (({"speed_perturb": [0.9, 1.1]}, "speed_perturb"), ({"noise_snr": [20, 5], "aug_copies": 1},
                     "noise_snr"), ({"aug_copies": 2}, "aug_copies"), ({"reverb_prob": 2.0, "aug_copies": 1},
                                                                          "reverb_prob"),
                     ({"noise_snr": [5, 10], "aug_copies": 1, "noise_types": ["grey"]}, "noise_types"),
                     ({"vtlp": [1.1, 0.9], "aug_copies": 1}, "vtlp")):
        with pytest.raises(InputError, match=key):
            split_params(make_params(corpus, cache_dir, **bad))
    with pytest.raises(InputError, match="augmentation is for the ASR families"):
        split_params({"family": "tts_acoustic", "train_manifest": "a", "dev_manifest": "b", "specaug": True})


def test_utterance_cmvn_takes_away_a_gain_the_training_set_never_had(corpus, cache_dir, tmp_path):
    """cmvn: utterance removes each utterance's mean log-mel: a test set played 10 dB quieter reads
    as the same features (global CMVN reads them shifted); the store is the same either way."""
    import soundfile

    from tests.factories import copy_manifest

    def quieter(i, row):
        wav, sr = soundfile.read(row["audio"], dtype="float32")
        row["audio"] = str(tmp_path / f"q{i}.flac")
        soundfile.write(row["audio"], wav * 10 ** (-10 / 20), sr, subtype="PCM_24")
        return row

    test_m = read_manifest(corpus["test"])
    quiet_m = read_manifest(str(copy_manifest(corpus["test"], tmp_path / "quiet.jsonl", quieter)))
    shift = {}
    for cmvn in ("global", "utterance"):
        run, data = _data(corpus, cache_dir, cmvn=cmvn)
        assert data.train.cmvn == data.dev.cmvn == cmvn
        kw = dict(tok=data.tokenizer, feats=run.features, cache_dir=str(cache_dir), mean=data.train.mean,
                  std=data.train.std, with_lang_tag=False, progress=False)
        a, b = _batches(dataset_for(test_m, **kw)), _batches(dataset_for(quiet_m, **kw))
        diffs = [(x.feats - y.feats).abs()[x.feats != 0].mean().item() for x, y in zip(a, b)]
        shift[cmvn] = max(diffs)
        if cmvn == "utterance":  # every utterance's frames average to zero in every channel
            f, n = a[0].feats[0], int(a[0].feat_lens[0])
            assert f[:n].mean(0).abs().max().item() < 1e-3
    assert shift["utterance"] < 0.02 < 0.2 < shift["global"], shift
    # read-time normalisation: both settings read one store entry
    assert _data(corpus, cache_dir, cmvn="utterance")[1].train.store.path == \
        _data(corpus, cache_dir)[1].train.store.path
    with pytest.raises(InputError, match="cmvn"):
        split_params(make_params(corpus, cache_dir, cmvn="speaker"))
    with pytest.raises(InputError, match="key 'cmvn'"):
        split_params({"family": "tts_acoustic", "train_manifest": "a", "dev_manifest": "b", "cmvn": "utterance"})
