"""Are the installed packages the versions ``requirements.lock`` pins? ``python -m tune_jobs.lockcheck
[LOCK]`` exits 1 naming each that differs (``make install`` runs it after installing)."""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path


def pinned(lock: str | Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line (comments and blank lines skipped)."""
    out = {}
    for n, line in enumerate(Path(lock).read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if m is None:
            raise ValueError(f"{lock}:{n}: not a pin (name==version): {line!r}")
        out[m.group(1)] = m.group(3)
    return out


def mismatches(lock: str | Path) -> list[str]:
    bad = []
    for name, want in pinned(lock).items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = "not installed"
        if have != want:
            bad.append(f"{name}: locked {want}, installed {have}")
    return bad


def main(argv: list[str]) -> int:
    lock = argv[0] if argv else "requirements.lock"
    bad = mismatches(lock)
    for b in bad:
        print(f"{lock}: {b}", file=sys.stderr)
    if not bad:
        print(f"{lock}: all {len(pinned(lock))} pinned versions installed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
