"""YAML with line numbers, so that an error can say ``job.yaml:12 (search_space.lr)``."""
from __future__ import annotations

from pathlib import Path

import yaml

from asr_core.errors import InputError


def load_with_lines(path: str | Path) -> tuple[dict, dict[str, int]]:
    """Return (data, {dotted.key: line}) for a YAML mapping file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "file not found")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InputError(where, f"not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise InputError(str(path), "a job file must be a YAML mapping")
    lines: dict[str, int] = {}

    def walk(n, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):  # phases.0.params.lr
            for i, v in enumerate(n.value):
                lines[f"{prefix}.{i}"] = v.start_mark.line + 1
                walk(v, f"{prefix}.{i}")

    walk(node, "")
    return data, lines


class Locator:
    """Turns a dotted key into ``file:line (key)`` for error messages. ``prefixes`` are tried in
    order (a profile's or a phase's section before the top level), so a key overridden by a
    profile points at the profile's line."""

    def __init__(self, path: str | Path, lines: dict[str, int], prefixes: tuple[str, ...] = ("",)):
        self.path, self.lines, self.prefixes = str(path), lines, prefixes

    def within(self, *prefixes: str) -> "Locator":
        return Locator(self.path, self.lines, (*prefixes, *self.prefixes))

    def __call__(self, key: str) -> str:
        for prefix in self.prefixes:
            if prefix + key in self.lines:
                return f"{self.path}:{self.lines[prefix + key]} ({prefix + key})"
        for prefix in self.prefixes:
            k = key
            while k and prefix + k not in self.lines:
                k = k.rpartition(".")[0]
            if k:
                return f"{self.path}:{self.lines[prefix + k]} ({prefix + key})"
        return f"{self.path} ({key})"
