"""YAML with line numbers, so that an error can say ``job.yaml:12 (search_space.lr)``.

Read with ``Loader``: PyYAML's safe loader with two YAML 1.2 rules it lacks. ``1e-3`` and
``1.0e6`` are numbers (YAML 1.1, PyYAML's, needs a dot and a signed exponent, and reads them as
strings, so ``choice: [1e-3, 3e-3]`` would hand a trial the string "1e-3"), and a key written
twice in one mapping is an error naming both lines (YAML 1.1 keeps the last silently:
``family`` twice trained the second family)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from asr_core.errors import InputError


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` reading floats as YAML 1.2 does."""


# YAML 1.2 core schema floats not already PyYAML's: a mantissa with or without a dot, an exponent
# with or without a sign (yaml.resolver's own float pattern stays first for everything it matches)
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_value(text: str, where: str):
    """One YAML value (``--set key=VALUE``), read as a job file's values are."""
    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as e:
        raise InputError(where, f"not a valid YAML value: {text!r} ({getattr(e, 'problem', e)})") from None


def _duplicate(node, path: Path) -> None:
    """A key written twice in one mapping: an error naming the file and both lines."""
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in first:
                    raise InputError(f"{path}:{k.start_mark.line + 1}",
                                     f"key '{k.value}' is written twice in one mapping (first at line "
                                     f"{first[k.value]}); YAML keeps only one of them: delete one")
                first[k.value] = k.start_mark.line + 1
            _duplicate(v, path)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _duplicate(v, path)


def load_with_lines(path: str | Path) -> tuple[dict, dict[str, int]]:
    """Return (data, {dotted.key: line}) for a YAML mapping file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "file not found")
    text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is no key
    try:  # parsed once: the node tree gives the lines, the same tree the data
        loader = Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InputError(where, f"not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise InputError(str(path), "a job file must be a YAML mapping")
    _duplicate(node, path)
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
