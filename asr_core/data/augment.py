"""Training-data augmentation: speed perturbation, additive noise and reverberation of the waveform,
vocal tract length perturbation of the filterbank, SpecAugment of the features. Seeded, for the
training set only: dev and test never see it.

**Waveform augmentation lives in the feature store.** Features are extracted once per job and
memory-mapped by every worker (``features.py``); a worker never opens audio (its node may not see
it). So speed perturbation, noise and reverberation are applied when the store is built, as
Kaldi's and icefall's recipes keep speed-perturbed and reverberated copies of the training data:
``aug_copies`` copies of the training set, each utterance of each copy with its own draw (a speed
factor from ``speed_perturb``, noise at an SNR drawn from ``noise_snr``, a synthetic room with
probability ``reverb_prob``), the draw seeded by ``aug_seed``, the copy and the utterance's id
(so it does not depend on how the extraction was sharded). Each epoch every training utterance is
read from the clean features or from one of the copies, drawn under the run's ``seed`` and the
epoch (:func:`epoch_choice`). Batches are planned on the longest of an utterance's versions, so a
batch stays within ``batch_bins`` whichever version is drawn, and every epoch has the same steps.

**SpecAugment** (Park et al. 2019) masks bands of mel channels and spans of frames of each
training batch as it is assembled (:func:`spec_augment`), new every epoch, seeded by the run's
seed, the epoch and the batch's utterances.
"""
from __future__ import annotations

import json
import math
import random
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torchaudio.functional as AF

from asr_core.errors import KeyProblem

# the keys that change the stored features (the driver builds the copies before the search)
WAVEFORM_KEYS = ("aug_copies", "speed_perturb", "noise_snr", "noise_prob", "noise_types", "reverb_prob", "vtlp",
                 "aug_seed")
# noise colours: the exponent of the power spectrum's 1/f fall
NOISE_TYPES = {"white": 0.0, "pink": 1.0, "brown": 2.0}


@dataclass
class AugmentConfig:
    # waveform level (copies of the training set in the feature store)
    aug_copies: int = 0  # augmented copies of the training set; 0 = none
    speed_perturb: list[float] = field(default_factory=list)  # factors, one drawn per utterance and copy (0.9, 1.0, 1.1)
    noise_snr: list[float] = field(default_factory=list)  # [low, high] dB: noise at an SNR drawn from the range
    noise_prob: float = 1.0  # share of a copy's utterances that get noise (with noise_snr)
    noise_types: list[str] = field(default_factory=lambda: list(NOISE_TYPES))  # drawn from, per utterance
    reverb_prob: float = 0.0  # share of a copy's utterances convolved with a synthetic room impulse response
    vtlp: list[float] = field(default_factory=list)  # [low, high]: a copy's filterbank warped by a factor drawn
    # from the range (vocal tract length perturbation, Jaitly & Hinton 2013: another speaker's formants)
    aug_seed: int = 0  # seeds the copies' draws
    # feature level (each training batch)
    specaug: bool = False
    freq_mask: int = 10  # widest frequency mask (mel channels), as torchaudio's FrequencyMasking
    time_mask: int = 40  # widest time mask (frames), as torchaudio's TimeMasking ...
    time_mask_ratio: float = 0.2  # ... and at most this share of the utterance's frames
    num_masks: int = 2  # masks of each kind

    def validate(self) -> None:
        if self.aug_copies < 0:
            raise KeyProblem("aug_copies", "key 'aug_copies' must be >= 0")
        if any(not 0.5 <= s <= 2.0 for s in self.speed_perturb):
            raise KeyProblem("speed_perturb", f"key 'speed_perturb': factors must lie in [0.5, 2], got {self.speed_perturb}")
        if self.vtlp and (len(self.vtlp) != 2 or not 0.7 <= self.vtlp[0] <= self.vtlp[1] <= 1.3):
            raise KeyProblem("vtlp", f"key 'vtlp': expected [low, high] warp factors within [0.7, 1.3], got {self.vtlp}")
        if self.noise_snr and (len(self.noise_snr) != 2 or self.noise_snr[0] > self.noise_snr[1]):
            raise KeyProblem("noise_snr", f"key 'noise_snr': expected [low, high] in dB, got {self.noise_snr}")
        bad = [t for t in self.noise_types if t not in NOISE_TYPES]
        if bad or not self.noise_types:
            raise KeyProblem("noise_types", f"key 'noise_types': {bad or 'empty'}; choose from {list(NOISE_TYPES)}")
        for key in ("noise_prob", "reverb_prob", "time_mask_ratio"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise KeyProblem(key, f"key '{key}' must be in [0, 1]")
        if min(self.freq_mask, self.time_mask, self.num_masks) < 0:
            raise KeyProblem("freq_mask", "keys 'freq_mask', 'time_mask' and 'num_masks' must be >= 0")
        wants = [k for k in ("speed_perturb", "noise_snr", "vtlp") if getattr(self, k)] + \
            (["reverb_prob"] if self.reverb_prob > 0 else [])
        if wants and not self.aug_copies:
            raise KeyProblem(wants[0], f"key '{wants[0]}' needs 'aug_copies' >= 1: the augmented versions are "
                                       "copies of the training set in the feature store")
        if self.aug_copies and not wants:
            raise KeyProblem("aug_copies", "key 'aug_copies' needs something to apply: 'speed_perturb', "
                                           "'noise_snr', 'reverb_prob' or 'vtlp'")

    @property
    def waveform(self) -> bool:
        return self.aug_copies > 0

    def is_default(self) -> bool:
        return self == AugmentConfig()


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


@dataclass(frozen=True)
class Perturbation:
    """How copy ``copy`` (1-based) of the training set is made from each utterance's waveform."""
    speeds: tuple[float, ...]
    noise_snr: tuple[float, ...]
    noise_prob: float
    noise_types: tuple[str, ...]
    reverb_prob: float
    seed: int
    copy: int
    vtlp: tuple[float, ...] = ()

    def key(self) -> str:
        d = asdict(self)
        if not self.vtlp:  # the key of a copy made before vtlp existed: its store entry stays valid
            del d["vtlp"]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def of(cls, cfg: AugmentConfig, copy: int) -> "Perturbation":
        return cls(tuple(cfg.speed_perturb), tuple(cfg.noise_snr), cfg.noise_prob, tuple(cfg.noise_types),
                   cfg.reverb_prob, cfg.aug_seed, copy, tuple(cfg.vtlp))

    def __call__(self, wav: torch.Tensor, sr: int, uid: str) -> tuple[torch.Tensor, dict]:
        """(samples,) float waveform -> its perturbed version and what was drawn (``drawn["vtlp"]``:
        the warp factor the copy's filterbank is computed with, ``features.compute_fbank``)."""
        rng = random.Random(_seed(self.seed, self.copy, uid))
        gen = torch.Generator().manual_seed(_seed(self.seed, self.copy, uid, "torch"))
        drawn: dict = {}
        if self.speeds:
            factor = rng.choice(self.speeds)
            drawn["speed"] = factor
            if factor != 1.0:
                # Kaldi's / lhotse's speed perturbation: resampled, so tempo and pitch change together
                wav, _ = AF.speed(wav[None], sr, factor)
                wav = wav[0]
        if self.reverb_prob and rng.random() < self.reverb_prob:
            rt60 = rng.uniform(0.2, 0.7)
            drawn["rt60"] = round(rt60, 3)
            wav = reverberate(wav, sr, rt60, gen)
        if self.noise_snr and rng.random() < self.noise_prob:
            snr = rng.uniform(*self.noise_snr)
            kind = rng.choice(self.noise_types)
            drawn.update(snr_db=round(snr, 2), noise=kind)
            noise = coloured_noise(wav.numel(), NOISE_TYPES[kind], gen)
            wav = AF.add_noise(wav[None], noise[None], torch.tensor([snr]))[0]
        if self.vtlp:
            drawn["vtlp"] = round(rng.uniform(*self.vtlp), 4)
        peak = float(wav.abs().max()) if wav.numel() else 0.0
        return (wav / peak * 0.99 if peak > 0.99 else wav), drawn


def coloured_noise(n: int, exponent: float, gen: torch.Generator) -> torch.Tensor:
    """(n,) Gaussian noise whose power falls as 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS.
    Why made here: no field library ships a noise generator (MUSAN-like corpora are downloads)."""
    white = torch.randn(n, generator=gen)
    if exponent == 0.0 or n < 4:
        return white
    spec = torch.fft.rfft(white)
    f = torch.arange(spec.numel(), dtype=torch.float32)
    f[0] = 1.0
    out = torch.fft.irfft(spec / f.pow(exponent / 2), n=n)
    return out / out.pow(2).mean().sqrt().clamp_min(1e-8)


def reverberate(wav: torch.Tensor, sr: int, rt60: float, gen: torch.Generator) -> torch.Tensor:
    """``wav`` in a synthetic room: a direct path plus exponentially decaying Gaussian reflections
    reaching -60 dB after ``rt60`` seconds, at the input's RMS. Why synthetic: torchaudio 2.11 has
    no room simulator (``simulate_rir_ism`` was in the removed prototype package) and real impulse
    responses are a download."""
    n = max(2, int(rt60 * sr))
    t = torch.arange(n, dtype=torch.float32) / sr
    rir = torch.randn(n, generator=gen) * torch.exp(-6.9 * t / rt60) * 0.3
    rir[0] = 1.0
    out = AF.fftconvolve(wav, rir)[: wav.numel()]
    rms_in, rms_out = wav.pow(2).mean().sqrt(), out.pow(2).mean().sqrt().clamp_min(1e-8)
    return out * (rms_in / rms_out)


def epoch_choice(n: int, versions: int, seed: int, epoch: int) -> list[int]:
    """Which version (0 = clean, k = copy k) each of ``n`` training utterances is read from in ``epoch``."""
    rng = random.Random(_seed("versions", seed, epoch))
    return [rng.randrange(versions) for _ in range(n)]


def spec_augment(feats: np.ndarray, lens, cfg: AugmentConfig, seed: int) -> None:
    """Mask ``feats`` (B, T, F), normalised (0 = the mean), in place: per utterance ``num_masks``
    bands of up to ``freq_mask`` channels and ``num_masks`` spans of up to ``time_mask`` frames (and
    at most ``time_mask_ratio`` of its frames). Why not torchaudio's FrequencyMasking/TimeMasking:
    they draw from torch's global generator, which the training step's dropout shares; a batch
    assembled in the prefetch thread would make both unreproducible."""
    rng = np.random.default_rng(seed)
    F_ = feats.shape[2]
    for b, T in enumerate(int(x) for x in lens):
        for _ in range(cfg.num_masks):
            w = int(rng.integers(0, min(cfg.freq_mask, F_) + 1))
            f0 = int(rng.integers(0, F_ - w + 1))
            feats[b, :T, f0:f0 + w] = 0.0
            w = int(rng.integers(0, min(cfg.time_mask, math.floor(cfg.time_mask_ratio * T)) + 1))
            t0 = int(rng.integers(0, T - w + 1))
            feats[b, t0:t0 + w, :] = 0.0


def batch_seed(seed: int, epoch: int, ids) -> int:
    return _seed("specaug", seed, epoch, *ids)
