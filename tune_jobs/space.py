"""Search spaces written in job files, turned into Ray Tune domains.

    lr:          {loguniform: [1.0e-4, 1.0e-2]}
    dropout:     {uniform: [0.0, 0.3]}
    lstm_hidden: {choice: [128, 192, 256]}
    lstm_layers: {randint: [1, 4]}        # upper bound exclusive, as in Tune
    optimizer:   {grid: [adam, adamw]}    # every value, with the random/grid searcher only
"""
from __future__ import annotations

from typing import Any, Callable

from asr_core.errors import InputError

KINDS = ("loguniform", "uniform", "choice", "randint", "grid")


def _num(v: Any, where: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InputError(where, f"expected a number, got {v!r}") from None


def parse_space(space: dict, locate: Callable[[str], str]) -> dict:
    """Tune domains of every dimension (grid dimensions as ``tune.grid_search``)."""
    from ray import tune

    out = {}
    if not isinstance(space, dict):
        raise InputError(locate("search_space"), "search_space must be a mapping of parameter -> distribution")
    for name, spec in space.items():
        where = locate(f"search_space.{name}")
        if not isinstance(spec, dict) or len(spec) != 1:
            raise InputError(where, f"a distribution is one of {list(KINDS)} with its arguments, "
                                    f"e.g. {{loguniform: [1e-4, 1e-2]}}; got {spec!r}")
        (kind, args), = spec.items()
        if kind not in KINDS:
            raise InputError(where, f"unknown distribution '{kind}' (known: {list(KINDS)})")
        if kind in ("loguniform", "uniform", "randint"):
            if not isinstance(args, list) or len(args) != 2:
                raise InputError(where, f"{kind} takes [low, high], got {args!r}")
            lo, hi = _num(args[0], where), _num(args[1], where)
            if not lo < hi:
                raise InputError(where, f"{kind} needs low < high, got {args!r}")
            if kind == "loguniform":
                if lo <= 0:
                    raise InputError(where, f"loguniform needs low > 0, got {args!r}")
                out[name] = tune.loguniform(lo, hi)
            elif kind == "uniform":
                out[name] = tune.uniform(lo, hi)
            else:
                if lo != int(lo) or hi != int(hi):
                    raise InputError(where, f"randint takes integers, got {args!r}")
                out[name] = tune.randint(int(lo), int(hi))
        else:
            if not isinstance(args, list) or not args:
                raise InputError(where, f"{kind} takes a non-empty list of values, got {args!r}")
            out[name] = tune.choice(args) if kind == "choice" else tune.grid_search(args)
    return out


def split_grid(space: dict) -> tuple[dict, dict[str, list]]:
    """(written dimensions that are sampled, {name: values} of grid dimensions)."""
    grid = {k: list(v["grid"]) for k, v in space.items() if isinstance(v, dict) and "grid" in v}
    return {k: v for k, v in space.items() if k not in grid}, grid


def extremes(spec: dict) -> list:
    """The values a written distribution can take at its ends: every listed value, or low and high
    (randint's high is exclusive). Enough to tell whether a parameter's range changes a model's shape."""
    (kind, args), = spec.items()
    if kind in ("choice", "grid"):
        return list(args)
    if kind == "randint":
        return [int(args[0]), int(args[1]) - 1]
    return [float(args[0]), float(args[1])]
