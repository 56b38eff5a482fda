"""Length-bucketed batches sized by ``batch_bins`` and per-worker sharding.

``batch_bins`` has ESPnet's ``numel`` meaning: a batch's padded size, summed over input and
output, ``batch_size * (max_frames * feat_dim + max_tokens)``, stays within the budget. Why our
own sampler and not ESPnet's: ESPnet is not a dependency (it would pin its own torch); the rule
is twenty lines. Batches hold utterances of similar length, so padding is small.
"""
from __future__ import annotations

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
    """A manifest's utterances joined to their cached features and token ids."""

    def __init__(self, utts: list[Utterance], store: FeatureStore, tokenizer: CharTokenizer,
                 mean: np.ndarray, std: np.ndarray, with_lang_tag: bool, where: str):
        self.utts = utts
        self.store = store
        self.rows = [store.index[u.id] for u in utts]
        self.frames = [int(store.num_frames[r]) for r in self.rows]
        lang = (lambda u: u.language) if with_lang_tag else (lambda u: None)
        self.tokens = [tokenizer.encode(u.text, lang(u), where=f"{where}: utterance '{u.id}'") for u in utts]
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.utts)

    def batches(self, batch_bins: int, batch_size: int = 0, padding: bool = True) -> list[list[int]]:
        return make_batches(self.frames, [len(t) for t in self.tokens], self.store.n_mels, batch_bins,
                            batch_size=batch_size, padding=padding)

    def collate(self, idx: Sequence[int]) -> Batch:
        T = max(self.frames[i] for i in idx)
        S = max(len(self.tokens[i]) for i in idx)
        feats = np.zeros((len(idx), T, self.store.n_mels), np.float32)
        targets = np.zeros((len(idx), S), np.int64)
        for b, i in enumerate(idx):
            f = self.store.feats(self.rows[i])
            feats[b, : len(f)] = (f - self.mean) / self.std
            targets[b, : len(self.tokens[i])] = self.tokens[i]
        return Batch(
            feats=torch.from_numpy(feats),
            feat_lens=torch.tensor([self.frames[i] for i in idx]),
            targets=torch.from_numpy(targets),
            target_lens=torch.tensor([len(self.tokens[i]) for i in idx]),
            texts=[self.utts[i].text for i in idx],
            languages=[self.utts[i].language for i in idx],
            ids=[self.utts[i].id for i in idx],
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
