"""Everything a run needs from its manifests: validated utterances, tokenizer, cached features."""
from __future__ import annotations

from dataclasses import dataclass

from asr_core.data.batching import SpeechDataset
from asr_core.data.features import FeatureConfig, FeatureStore, load_features
from asr_core.data.manifest import Manifest, read_manifest
from asr_core.data.synth import default_cache_dir
from asr_core.data.tokenizer import CharTokenizer
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


def prepare_data(data: DataConfig, feats: FeatureConfig, progress: bool = True) -> RunData:
    """Validate both manifests, build the tokenizer from the training texts, map cached features.

    Raises InputError naming file and line for a bad row (unless ``skip_bad``), and for a dev
    character the training tokenizer cannot map.
    """
    train_m = read_manifest(data.train_manifest, skip_bad=data.skip_bad)
    dev_m = read_manifest(data.dev_manifest, skip_bad=data.skip_bad)
    tok = CharTokenizer.build((u.text for u in train_m.utterances), (u.language for u in train_m.utterances))
    cache = cache_dir_of(data)
    train_store = load_features(train_m, feats, cache, progress=progress)
    dev_store = load_features(dev_m, feats, cache, progress=progress)
    utts = train_m.utterances[: data.max_train_utts] if data.max_train_utts else train_m.utterances
    mean, std = train_store.mean, train_store.std  # global CMVN from the training set
    train = SpeechDataset(utts, train_store, tok, mean, std, data.with_lang_tag, train_m.path)
    dev = SpeechDataset(dev_m.utterances, dev_store, tok, mean, std, data.with_lang_tag, dev_m.path)
    return RunData(tok, train, dev, train_m, dev_m)


def dataset_for(manifest: Manifest, tok: CharTokenizer, feats: FeatureConfig, cache_dir: str,
                mean, std, with_lang_tag: bool, progress: bool = True) -> SpeechDataset:
    store: FeatureStore = load_features(manifest, feats, cache_dir, progress=progress)
    return SpeechDataset(manifest.utterances, store, tok, mean, std, with_lang_tag, manifest.path)
