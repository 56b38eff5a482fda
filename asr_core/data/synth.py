"""Demo corpora synthesized offline with eSpeak NG (``espeakng-loader`` ships the library and voices).

Why ctypes and not a wrapper package: the loader wheel ships only the shared library and its
data; the Python wrappers on the registry either call the ``espeak-ng`` binary (not installed)
or pull phonemizer stacks we do not need. The five calls below are the whole API we use.

Corpora:
  * ``demo-mono``      English.
  * ``demo-bilingual`` English and Persian, each utterance tagged with its ``language``.

Splits are disjoint in both voice variant and sentence, so the test CER measures unseen voices
saying unseen sentences. ``test_hard`` (when asked for) holds more of the test split's unseen voices
saying other unseen sentences at speaking rates and noise levels outside every other split's
range: robustness, measured. Output is deterministic for a given seed and sizes.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from asr_core.data.manifest import Utterance, write_manifest
from asr_core.progress_bar import progress_bar

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")
HARD = "test_hard"
# eSpeak rate (words a minute) and SNR (dB) of the splits above, and test_hard's beyond them
RATE, SNR_DB = (140, 200), (25.0, 40.0)
HARD_RATES, HARD_SNR_DB = ((100, 125), (210, 230)), (18.0, 24.0)

# A fixed vocabulary; sentences are random word sequences drawn from it.
EN_WORDS = """
the a one two three four five six seven eight nine ten red green blue black white yellow
small big long short old new good bad happy quiet loud fast slow warm cold bright dark
cat dog bird fish horse mouse lion tiger bear rabbit house car boat train road river
tree stone window door table chair book paper letter music song voice water fire wind
morning evening night day week year city village garden market school doctor teacher
child mother father friend people king queen farmer sailor driver
runs walks sings reads writes opens closes finds brings takes makes sees hears likes
wants needs gives keeps leaves moves turns calls helps plays waits stops starts
and but with without under over near behind before after into from
today tomorrow always never often here there again very quite
""".split()

FA_WORDS = """
من تو او ما شما آنها خانه کتاب آب نان دست سر چشم روز شب صبح شهر راه کوه دریا
درخت گل باغ مادر پدر برادر خواهر دوست کار بازار مدرسه معلم بچه ماشین در پنجره
خوب بد بزرگ کوچک سفید سیاه سبز قرمز گرم سرد تازه زیبا آرام
می‌رود می‌آید می‌خواند می‌نویسد می‌بیند می‌خواهد دارد است بود شد
و با در از به برای امروز فردا همیشه
""".split()

LANG_WORDS = {"en": EN_WORDS, "fa": FA_WORDS}
# Variants whose sound has no voicing at all; an ASR demo learns nothing useful from them.
EXCLUDED_VARIANTS = {"whisper", "whisperf"}


@dataclass(frozen=True)
class CorpusSpec:
    name: str  # demo-mono | demo-bilingual
    languages: tuple[str, ...]
    train: int = 3000
    dev: int = 200
    test: int = 200
    seed: int = 0
    min_words: int = 3
    max_words: int = 7
    test_hard: int = 0

    def key(self) -> str:
        return f"{self.name}-s{self.seed}-{self.train}-{self.dev}-{self.test}" + \
            (f"-h{self.test_hard}" if self.test_hard else "")

    def splits(self) -> tuple[str, ...]:
        return SPLITS + ((HARD,) if self.test_hard else ())


CORPORA = {
    "demo-mono": ("en",),
    "demo-bilingual": ("en", "fa"),
}


def corpus_spec(name: str, **sizes) -> CorpusSpec:
    if name not in CORPORA:
        raise ValueError(f"unknown demo corpus: {name} (known: {sorted(CORPORA)})")
    return CorpusSpec(name=name, languages=CORPORA[name], **sizes)


class ESpeak:
    """Minimal synchronous libespeak-ng driver (one per process; the library is global state)."""

    _instance: "ESpeak | None" = None
    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    RATE, PITCH = 1, 3

    def __init__(self) -> None:
        import espeakng_loader

        self.data_path = espeakng_loader.get_data_path()
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        # 2 = AUDIO_OUTPUT_SYNCHRONOUS: samples come to our callback, nothing plays.
        self.sample_rate = self.lib.espeak_Initialize(2, 0, self.data_path.encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with {self.sample_rate} (data: {self.data_path})")
        self._chunks: list[np.ndarray] = []

        def _cb(wav, numsamples, _events):
            if numsamples > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
            return 0

        self._cb = self._CALLBACK(_cb)  # keep a reference: ctypes does not
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]

    @classmethod
    def get(cls) -> "ESpeak":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def variants(self) -> list[str]:
        names = sorted(os.listdir(os.path.join(self.data_path, "voices", "!v")))
        return [n for n in names if " " not in n and n not in EXCLUDED_VARIANTS]

    def synth(self, text: str, language: str, variant: str, rate: int, pitch: int) -> np.ndarray:
        """Return int16 samples at ``self.sample_rate``."""
        if self.lib.espeak_SetVoiceByName(f"{language}+{variant}".encode()) != 0:
            raise RuntimeError(f"eSpeak has no voice {language}+{variant}")
        self.lib.espeak_SetParameter(self.RATE, rate, 0)
        self.lib.espeak_SetParameter(self.PITCH, pitch, 0)
        self._chunks = []
        data = text.encode("utf-8")
        # position 0, POS_CHARACTER=1, end 0, flags espeakCHARS_UTF8=1
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _split_variants(variants: list[str], rng: random.Random) -> dict[str, list[str]]:
    v = variants[:]
    rng.shuffle(v)
    n_test = max(2, len(v) * 15 // 100)
    n_dev = max(2, len(v) * 10 // 100)
    return {"test": v[:n_test], "dev": v[n_test:n_test + n_dev], "train": v[n_test + n_dev:]}


def _sentences(spec: CorpusSpec, rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    """Unique (language, sentence) pairs per split; no sentence appears in two splits."""
    counts = {s: getattr(spec, s) for s in SPLITS}
    seen: set[tuple[str, str]] = set()
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for split in ("test", "dev", "train"):  # held-out splits first
        while len(out[split]) < counts[split]:
            lang = spec.languages[len(out[split]) % len(spec.languages)]
            words = LANG_WORDS[lang]
            n = rng.randint(spec.min_words, spec.max_words)
            sent = " ".join(rng.choice(words) for _ in range(n))
            if (lang, sent) in seen:
                continue
            seen.add((lang, sent))
            out[split].append((lang, sent))
    return out


def _hard_sentences(spec: CorpusSpec, taken: dict[str, list[tuple[str, str]]], rng: random.Random) -> list:
    """test_hard's sentences: unseen in every other split (drawn after them, from their own
    generator, so asking for test_hard leaves the other splits byte for byte the same)."""
    seen = {p for v in taken.values() for p in v}
    out: list[tuple[str, str]] = []
    while len(out) < spec.test_hard:
        lang = spec.languages[len(out) % len(spec.languages)]
        sent = " ".join(rng.choice(LANG_WORDS[lang]) for _ in range(rng.randint(spec.min_words, spec.max_words)))
        if (lang, sent) not in seen:
            seen.add((lang, sent))
            out.append((lang, sent))
    return out


def synthesize_corpus(spec: CorpusSpec, out_dir: str | os.PathLike, progress: bool = True) -> dict[str, str]:
    """Write ``{split}.jsonl`` and audio under ``out_dir``; return split -> manifest path."""
    out_dir = Path(out_dir)
    engine = ESpeak.get()
    rng = random.Random(spec.seed)
    voice_split = _split_variants(engine.variants(), rng)
    sents = _sentences(spec, rng)
    noise_gen = torch.Generator().manual_seed(spec.seed)
    hard_rng = random.Random(spec.seed + 7919)
    if spec.test_hard:
        sents[HARD] = _hard_sentences(spec, sents, hard_rng)
        voice_split[HARD] = voice_split["test"]
    paths = {}
    total = sum(len(v) for v in sents.values())
    bar = progress_bar(total, f"synthesizing {spec.name}", "utt", enabled=progress)
    for split in spec.splits():
        audio_dir = out_dir / "audio" / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        utts = []
        r = hard_rng if split == HARD else rng
        for i, (lang, text) in enumerate(sents[split]):
            variant = r.choice(voice_split[split])
            if split == HARD:  # slower or faster than any other split, and noisier
                rate = r.randint(*r.choice(HARD_RATES))
                pitch = r.randint(30, 70)
                snr_db = r.uniform(*HARD_SNR_DB)
            else:
                rate = rng.randint(*RATE)
                pitch = rng.randint(30, 70)
                snr_db = rng.uniform(*SNR_DB)
            raw = engine.synth(text, lang, variant, rate, pitch)
            wav = torch.from_numpy(raw.astype(np.float32) / 32768.0)
            wav = AF.resample(wav, engine.sample_rate, SAMPLE_RATE)
            power = wav.pow(2).mean().clamp_min(1e-10)
            noise = torch.randn(wav.shape, generator=noise_gen) * torch.sqrt(power / 10 ** (snr_db / 10))
            wav = (wav + noise).clamp(-1.0, 1.0)
            uid = f"{split}-{i:05d}"
            path = audio_dir / f"{uid}.flac"
            soundfile.write(str(path), wav.numpy(), SAMPLE_RATE, subtype="PCM_16")
            utts.append(Utterance(id=uid, audio=str(path), duration=round(len(wav) / SAMPLE_RATE, 3),
                                  text=text, language=lang, speaker=variant))
            bar.update(1)
        manifest = out_dir / f"{split}.jsonl"
        write_manifest(manifest, utts, relative_to=str(out_dir))
        paths[split] = str(manifest)
    bar.close()
    return paths


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPEECHTUNE_CACHE", Path.home() / ".cache" / "speechtune"))


def ensure_corpus(name: str, cache_dir: str | os.PathLike | None = None, progress: bool = True,
                  **sizes) -> dict[str, str]:
    """Synthesize a demo corpus on first use; later calls return the cached manifests at once."""
    from filelock import FileLock

    spec = corpus_spec(name, **sizes)
    root = Path(cache_dir or default_cache_dir()) / "corpora" / spec.key()
    done = root / "DONE.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not done.is_file():
            log.info("synthesizing %s into %s", spec.name, root)
            # In a fresh process: libespeak-ng keeps state between utterances (durations shift by
            # a few ms depending on what it spoke before), so only a fresh engine makes a corpus
            # the same bytes for the same seed.
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                pool.submit(synthesize_corpus, spec, root, progress).result()
            done.write_text(json.dumps(asdict(spec)))
    return {s: str(root / f"{s}.jsonl") for s in spec.splits()}
