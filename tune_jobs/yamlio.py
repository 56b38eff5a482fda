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

    walk(node, "")
    return data, lines


class Locator:
    """Turns a dotted key into ``file:line (key)`` for error messages."""

    def __init__(self, path: str | Path, lines: dict[str, int]):
        self.path, self.lines = str(path), lines

    def __call__(self, key: str) -> str:
        k = key
        while k and k not in self.lines:
            k = k.rpartition(".")[0]
        line = self.lines.get(k)
        return f"{self.path}:{line} ({key})" if line else f"{self.path} ({key})"
