"""Length-bucketed batches sized by ``batch_bins`` and per-worker sharding.

``batch_bins`` has ESPnet's ``numel`` meaning: a batch's padded size, summed over input and
output, ``batch_size * (max_frames * feat_dim + max_tokens)``, stays within the budget. Why our
own sampler and not ESPnet's: ESPnet is not a dependency (it would pin its own torch); the rule
is twenty lines. Batches hold utterances of similar length, so padding is small.
"""
from __future__ import annotations

import copy
import dataclasses
import queue
import random
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from asr_core.data.features import FeatureStore
from asr_core.data.manifest import Utterance
from asr_core.data.tokenizer import CharTokenizer


def make_batches(frames: Sequence[int], tokens: Sequence[int], feat_dim: int, batch_bins: int,
                 min_batch_size: int = 1, batch_size: int = 0, padding: bool = True) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded numel fits ``batch_bins``, or of
    ``batch_size`` utterances when it is > 0. ``padding=False`` (seed 002's PADDING=OFF) puts only
    utterances of exactly the same number of frames together, so no frame is padding."""
    order = sorted(range(len(frames)), key=lambda i: (frames[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    max_f = max_t = 0
    for i in order:
        nf, nt = max(max_f, frames[i]), max(max_t, tokens[i])
        if batch_size > 0:
            full = len(cur) >= batch_size
        else:
            full = (len(cur) + 1) * (nf * feat_dim + nt) > batch_bins and len(cur) >= min_batch_size
        if cur and (full or (not padding and frames[i] != frames[cur[-1]])):
            batches.append(cur)
            cur, nf, nt = [], frames[i], tokens[i]
        cur.append(i)
        max_f, max_t = nf, nt
    if cur:
        batches.append(cur)
    return batches


def shard(batches: list[list[int]], rank: int, world_size: int, seed: int, epoch: int,
          shuffle: bool = True) -> list[list[int]]:
    """This worker's batches for ``epoch``. Every worker gets the same count (DDP needs equal
    steps); the few left over after an even split are dropped for training only."""
    order = list(range(len(batches)))
    if shuffle:
        random.Random(seed * 100003 + epoch).shuffle(order)
        usable = len(order) // world_size * world_size
        order = order[:usable] if usable else order
    return [batches[j] for j in order[rank::world_size]]


@dataclass
class Batch:
    feats: torch.Tensor        # (B, T, F) normalised, zero padded
    feat_lens: torch.Tensor    # (B,)
    targets: torch.Tensor      # (B, S) token ids, 0 padded
    target_lens: torch.Tensor  # (B,)
    texts: list[str]
    languages: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cpu":
            return self
        # non_blocking: a pinned batch (see SpeechDataset.iterate) copies while the GPU computes
        return dataclasses.replace(self, feats=self.feats.to(device, non_blocking=True),
                                   feat_lens=self.feat_lens.to(device, non_blocking=True),
                                   targets=self.targets.to(device, non_blocking=True),
                                   target_lens=self.target_lens.to(device, non_blocking=True))

    def pin_memory(self) -> "Batch":
        return dataclasses.replace(self, feats=self.feats.pin_memory(), feat_lens=self.feat_lens.pin_memory(),
                                   targets=self.targets.pin_memory(), target_lens=self.target_lens.pin_memory())


_END = object()


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class SpeechDataset:
    """A manifest's utterances joined to their cached features and token ids.

    A training set may carry augmented versions (``variants``: augmented copies of the training
    set in the feature store, ``augment.py``) and SpecAugment settings; :meth:`for_epoch` gives
    the epoch's view, each utterance read from the version drawn for that epoch and every batch
    masked. Without ``for_epoch`` (dev, test, scoring) the clean features are read, unmasked."""

    def __init__(self, utts: list[Utterance], store: FeatureStore, tokenizer: CharTokenizer,
                 mean: np.ndarray, std: np.ndarray, with_lang_tag: bool, where: str,
                 variants: Sequence[FeatureStore] = (), augment=None, cmvn: str = "global"):
        self.utts = utts
        self.store = store
        self.rows = [store.index[u.id] for u in utts]
        self.frames = [int(store.num_frames[r]) for r in self.rows]
        lang = (lambda u: u.language) if with_lang_tag else (lambda u: None)
        self.tokens = [tokenizer.encode(u.text, lang(u), where=f"{where}: utterance '{u.id}'") for u in utts]
        self.mean, self.std = mean, std
        self.cmvn = cmvn  # FeatureConfig.cmvn
        # (store, row, frames) of each utterance in each version; version 0 is the clean store. An
        # utterance a copy lacks (its extraction skipped it) is read clean in that version.
        self.versions = [list(zip([store] * len(utts), self.rows, self.frames))]
        for v in variants:
            self.versions.append([(v, v.index[u.id], int(v.num_frames[v.index[u.id]])) if u.id in v.index
                                  else self.versions[0][i] for i, u in enumerate(utts)])
        self.augment = augment
        self.choice: list[int] | None = None  # the epoch's version of each utterance (for_epoch)
        self.mask_seed: tuple[int, int] | None = None  # (seed, epoch) of SpecAugment (for_epoch)

    def __len__(self) -> int:
        return len(self.utts)

    def batches(self, batch_bins: int, batch_size: int = 0, padding: bool = True) -> list[list[int]]:
        # planned on each utterance's longest version: the batch fits whichever version an epoch draws
        frames = [max(v[i][2] for v in self.versions) for i in range(len(self.utts))]
        return make_batches(frames, [len(t) for t in self.tokens], self.store.n_mels, batch_bins,
                            batch_size=batch_size, padding=padding)

    def for_epoch(self, seed: int, epoch: int) -> "SpeechDataset":
        """This training set as epoch ``epoch`` of a run seeded ``seed`` reads it (the same draw on
        every worker and on every resume); itself when nothing is augmented."""
        masks = self.augment is not None and self.augment.specaug
        if len(self.versions) == 1 and not masks:
            return self
        from asr_core.data.augment import epoch_choice

        view = copy.copy(self)
        if len(self.versions) > 1:
            view.choice = epoch_choice(len(self.utts), len(self.versions), seed, epoch)
        view.mask_seed = (seed, epoch) if masks else None
        return view

    def source(self, i: int) -> tuple[FeatureStore, int, int]:
        """(store, row, frames) that utterance ``i`` is read from."""
        return self.versions[self.choice[i] if self.choice is not None else 0][i]

    def collate(self, idx: Sequence[int]) -> Batch:
        src = [self.source(i) for i in idx]
        T = max(n for _, _, n in src)
        S = max(len(self.tokens[i]) for i in idx)
        feats = np.zeros((len(idx), T, self.store.n_mels), np.float32)
        targets = np.zeros((len(idx), S), np.int64)
        for b, (i, (store, row, n)) in enumerate(zip(idx, src)):
            x = store.feats(row)  # (n, F) float16 view
            centre = x.mean(0, dtype=np.float32) if self.cmvn == "utterance" else self.mean
            feats[b, :n] = (x - centre) / self.std
            targets[b, : len(self.tokens[i])] = self.tokens[i]
        lens = [n for _, _, n in src]
        ids = [self.utts[i].id for i in idx]
        if self.mask_seed is not None:
            from asr_core.data.augment import batch_seed, spec_augment

            spec_augment(feats, lens, self.augment, batch_seed(*self.mask_seed, ids))
        return Batch(
            feats=torch.from_numpy(feats),
            feat_lens=torch.tensor(lens),
            targets=torch.from_numpy(targets),
            target_lens=torch.tensor([len(self.tokens[i]) for i in idx]),
            texts=[self.utts[i].text for i in idx],
            languages=[self.utts[i].language for i in idx],
            ids=ids,
        )

    def iterate(self, batches: list[list[int]], prefetch: int = 0, pin: bool = False) -> Iterator[Batch]:
        """The batches in order. ``prefetch`` > 0: a background thread gathers, normalises and pads
        up to that many batches ahead (numpy and torch release the GIL for the copies), pinned
        for the GPU with ``pin``, so the training step does not wait on data. Why a thread and
        not a DataLoader with worker processes: a batch is a gather from a memory-mapped file,
        and worker processes would add a copy through shared memory per batch and a process
        start per epoch; the order (and so seeding and resuming) stays exactly the same."""
        if prefetch <= 0:
            for b in batches:
                yield self.collate(b).pin_memory() if pin else self.collate(b)
            return
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for b in batches:
                    batch = self.collate(b)
                    if not _put(q, batch.pin_memory() if pin else batch, stop):
                        return
            except BaseException as e:  # handed to the consumer, raised there
                _put(q, e, stop)
                return
            _put(q, _END, stop)

        worker = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()
