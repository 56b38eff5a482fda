"""Everything a run needs from its manifests: validated utterances, tokenizer, features.

Two callers, two halves of one path. The job's driver calls :func:`check_data` before any trial
starts: every row is validated (local audio files checked), the feature store is built (Ray tasks
when Ray is up) and the dev set's characters are checked against the tokenizer. Each trial's
workers call :func:`prepare_data`: they read the same manifests (no audio is opened: a worker
may run on a node that cannot see the audio, and needs only features) and map the features from
the store, which names the rows the driver skipped and why.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from asr_core import storage
from asr_core.data.augment import AugmentConfig, Perturbation
from asr_core.data.batching import SpeechDataset
from asr_core.data.features import (INDEX_FILE, FeatureConfig, FeatureStore, default_root, ensure_store,
                                    open_store)
from asr_core.data.manifest import Manifest, Utterance, read_manifest
from asr_core.data.synth import default_cache_dir
from asr_core.data.tokenizer import CharTokenizer
from asr_core.errors import InputError
from asr_core.train.config import DataConfig


@dataclass
class RunData:
    tokenizer: CharTokenizer
    train: SpeechDataset
    dev: SpeechDataset
    train_manifest: Manifest
    dev_manifest: Manifest


def cache_dir_of(data: DataConfig) -> str:
    return data.cache_dir or str(default_cache_dir())


def store_root_of(data: DataConfig) -> str:
    return data.feature_store or default_root(cache_dir_of(data))


def usable(m: Manifest, skipped: dict[str, str], skip_bad: bool) -> list[Utterance]:
    """Rows of ``m`` that have features: a row the store skipped is dropped under ``skip_bad``
    and an error (the reason recorded at extraction, with file and line) otherwise."""
    out = []
    for u in m.utterances:
        if u.id in skipped:
            if not skip_bad:
                raise InputError(m.where.get(u.id, m.path), skipped[u.id])
            continue
        out.append(u)
    if not out:
        raise InputError(m.path, "no utterance of this manifest has features (every row was skipped)")
    return out


def duration_limit(data: DataConfig, feats: FeatureConfig, batch_bins: int, batch_size: int) -> float:
    """The longest utterance (seconds) a run accepts: ``max_duration``, else the longest whose
    frames alone fit ``batch_bins`` (none when batches count utterances, ``batch_size``)."""
    if data.max_duration:
        return data.max_duration
    return 0.0 if batch_size else batch_bins / feats.n_mels * feats.frame_shift_ms / 1000


def within_limit(utts: list[Utterance], limit: float, where_of, skip_bad: bool, skipped: list[str]) -> list[Utterance]:
    """``utts`` without those longer than ``limit`` seconds: each an error naming its file and line,
    or, under ``skip_bad``, dropped and listed in ``skipped``."""
    if not limit:
        return utts
    out = []
    for u in utts:
        if u.duration > limit:
            err = InputError(where_of(u), f"utterance '{u.id}' is {u.duration:.1f} s long, over max_duration "
                                          f"{limit:.1f} s (a batch of it alone would exceed batch_bins): set "
                                          "max_duration, raise batch_bins, or skip it with --skip-bad")
            if not skip_bad:
                raise err
            skipped.append(str(err))
            continue
        out.append(u)
    return out


def encodable(utts: list[Utterance], tok: CharTokenizer, with_lang_tag: bool, where_of, skip_bad: bool,
              skipped: list[str]) -> list[Utterance]:
    """``utts`` whose text (and language tag) the tokenizer maps: another row is an error naming
    its file and line, or, under ``skip_bad``, dropped and listed in ``skipped``."""
    out = []
    for u in utts:
        try:
            tok.encode(u.text, u.language if with_lang_tag else None, where=f"{where_of(u)}: utterance '{u.id}'")
        except InputError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            continue
        out.append(u)
    return out


def _tokenizer(train: list[Utterance]) -> CharTokenizer:
    return CharTokenizer.build((u.text for u in train), (u.language for u in train))


@dataclass
class CheckedData:
    tokenizer: CharTokenizer
    skipped: list[str]  # "file:line: why" of every row skip_bad dropped
    entries: dict[str, str]  # "train"/"dev" -> feature store entry
    aug_entries: list[str]  # the training set's augmented copies (augment.py), in copy order
    utterances: dict[str, list[tuple[Utterance, str]]]  # "train"/"dev" -> (row, its file:line), usable ones


def select_rows(train_m: Manifest, dev_m: Manifest, train_skipped: dict[str, str], dev_skipped: dict[str, str],
                data: DataConfig, max_duration: float, skipped: list[str]) -> tuple[CharTokenizer, list, list]:
    """The one rule for which rows a run uses, for the driver and the workers alike: rows with
    features (the store's skip list), no longer than ``max_duration``, and dev rows the training
    tokenizer maps. Each other row is an error naming it, or, under ``skip_bad``, appended to
    ``skipped``. Returns (tokenizer, train rows, dev rows)."""
    picked = []
    for m, store_skipped in ((train_m, train_skipped), (dev_m, dev_skipped)):
        rows = usable(m, store_skipped, data.skip_bad)
        picked.append(within_limit(rows, max_duration, lambda u, m=m: m.where.get(u.id, m.path), data.skip_bad,
                                   skipped))
    train, dev = picked
    tok = _tokenizer(train)
    dev = encodable(dev, tok, data.with_lang_tag, lambda u: dev_m.path, data.skip_bad, skipped)
    if not dev:
        raise InputError(dev_m.path, "no dev utterance is left to validate on (every row was skipped)")
    return tok, train, dev


def check_data(data: DataConfig, feats: FeatureConfig, progress: bool = True, parallel: bool = True,
               max_duration: float = 0.0, augment: AugmentConfig | None = None) -> CheckedData:
    """The driver's half: validate both manifests, build their feature stores (and the training
    set's augmented copies), then choose the rows as the workers will (``select_rows``)."""
    root = store_root_of(data)
    manifests, store_skipped, skipped_msgs, entries = {}, {}, [], {}
    for name, spec in (("train", data.train_manifest), ("dev", data.dev_manifest)):
        m = manifests[name] = read_manifest(spec, skip_bad=data.skip_bad)
        skipped_msgs += m.skipped
        entries[name], _ = ensure_store(m, feats, root, skip_bad=data.skip_bad, progress=progress, parallel=parallel)
        store_skipped[name] = json.loads(storage.read_text(storage.join(entries[name], INDEX_FILE)))["skipped"]
        skipped_msgs += [r for k, r in store_skipped[name].items() if k not in m.skipped_ids]
    tok, train, dev = select_rows(manifests["train"], manifests["dev"], store_skipped["train"], store_skipped["dev"],
                                  data, max_duration, skipped_msgs)
    aug_entries = [ensure_store(manifests["train"], feats, root, skip_bad=True, progress=progress, parallel=parallel,
                                perturb=p)[0] for p in perturbations(augment)]
    rows = {"train": train, "dev": dev}
    return CheckedData(tok, skipped_msgs, entries, aug_entries,
                       {k: [(u, manifests[k].where.get(u.id, manifests[k].path)) for u in us] for k, us in rows.items()})


def perturbations(augment: AugmentConfig | None) -> list[Perturbation]:
    """The augmented copies of the training set ``augment`` asks for (none without waveform augmentation)."""
    return [Perturbation.of(augment, k) for k in range(1, augment.aug_copies + 1)] if augment else []


def prepare_data(data: DataConfig, feats: FeatureConfig, progress: bool = True, check_audio: bool = True,
                 max_duration: float = 0.0, augment: AugmentConfig | None = None) -> RunData:
    """Manifests, tokenizer (from the training texts) and memory-mapped features of a run.
    Raises InputError naming file and line for a bad row (unless ``skip_bad``), and for a dev
    character the training tokenizer cannot map. Utterances over ``max_duration`` seconds are
    dropped under ``skip_bad`` (the driver refused them otherwise). ``augment``: the training set
    carries its augmented copies and SpecAugment (``SpeechDataset.for_epoch``); dev never does."""
    train_m = read_manifest(data.train_manifest, skip_bad=data.skip_bad, check_audio=check_audio)
    dev_m = read_manifest(data.dev_manifest, skip_bad=data.skip_bad, check_audio=check_audio)
    train_store = features_of(train_m, feats, data, progress, entry=data.train_features)
    dev_store = features_of(dev_m, feats, data, progress, entry=data.dev_features)
    tok, train_utts, dev_utts = select_rows(train_m, dev_m, train_store.skipped, dev_store.skipped, data,
                                            max_duration, [])
    utts = train_utts[: data.max_train_utts] if data.max_train_utts else train_utts
    mean, std = train_store.mean, train_store.std  # global CMVN from the training set
    given = data.train_aug_features
    copies = [copy_store(train_m, feats, data, p, given[i] if i < len(given) else "", progress)
              for i, p in enumerate(perturbations(augment))]
    train = SpeechDataset(utts, train_store, tok, mean, std, data.with_lang_tag, train_m.path, variants=copies,
                          augment=augment, cmvn=feats.cmvn)
    dev = SpeechDataset(dev_utts, dev_store, tok, mean, std, data.with_lang_tag, dev_m.path, cmvn=feats.cmvn)
    return RunData(tok, train, dev, train_m, dev_m)


def copy_store(m: Manifest, feats: FeatureConfig, data: DataConfig, perturb: Perturbation, entry: str = "",
               progress: bool = False) -> FeatureStore:
    """An augmented copy of the training set ``m`` (``entry`` when the driver built it), mapped from
    this node. A row the copy could not make is read clean (``SpeechDataset``), never an error here:
    the clean store already judged every row."""
    entry, extracted = ensure_store(m, feats, store_root_of(data), skip_bad=True, progress=progress, parallel=False,
                                    entry=entry, perturb=perturb)
    return open_store(entry, cache_dir_of(data), extracted)


def features_of(m: Manifest, feats: FeatureConfig, data: DataConfig, progress: bool = False,
                entry: str = "") -> FeatureStore:
    """The store entry of ``m`` (``entry`` when the driver named it; extracted in this process if
    nobody has), mapped from this node."""
    entry, extracted = ensure_store(m, feats, store_root_of(data), skip_bad=data.skip_bad, progress=progress,
                                    parallel=False, entry=entry)  # inside a trial: its workers hold the CPUs
    return open_store(entry, cache_dir_of(data), extracted)


def dataset_for(manifest: Manifest, tok: CharTokenizer, feats: FeatureConfig, cache_dir: str, mean, std,
                with_lang_tag: bool, progress: bool = True, feature_store: str = "",
                skip_bad: bool = False, skipped: list[str] | None = None) -> SpeechDataset:
    """A manifest scored by a trained model (its tokenizer and CMVN); rows the store skipped, or
    whose text or language the tokenizer cannot map, are errors or, under ``skip_bad``, dropped
    and appended to ``skipped``."""
    data = DataConfig(train_manifest="-", dev_manifest="-", cache_dir=cache_dir, feature_store=feature_store,
                      skip_bad=skip_bad, with_lang_tag=with_lang_tag)
    store = features_of(manifest, feats, data, progress)
    utts = encodable(usable(manifest, store.skipped, skip_bad), tok, with_lang_tag, lambda u: manifest.path,
                     skip_bad, skipped if skipped is not None else [])
    return SpeechDataset(utts, store, tok, mean, std, with_lang_tag, manifest.path, cmvn=feats.cmvn)
