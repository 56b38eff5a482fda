"""Experiment storage: a local path or an object-store URI (``s3://bucket/prefix``, ``gs://...``).

pyarrow's filesystems do the work, the same ones Ray Tune writes through, so what Tune can
write here can be read back. For S3 the usual AWS variables apply (credentials, region, and
``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO or moto); nothing of them is
written into a job file or an experiment directory.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def is_remote(uri: str | os.PathLike) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def resolve(uri: str | os.PathLike):
    """(pyarrow filesystem, path inside it)."""
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(str(uri).removeprefix("file://"))
    return pafs.FileSystem.from_uri(str(uri))


def normalize(uri: str | os.PathLike) -> str:
    """An object-store URI as it is, a local path made absolute."""
    return str(uri) if is_remote(uri) else os.path.abspath(str(uri).removeprefix("file://"))


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts]) if is_remote(uri) else os.path.join(os.path.abspath(uri), *parts)


def read_text(uri: str) -> str | None:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def write_text(uri: str, text: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode("utf-8"))
    fs.move(tmp, path)  # readers never see half a file


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def local_copy(uri: str | os.PathLike, dest: str | os.PathLike | None = None,
               skip_checkpoints: bool = True) -> Path:
    """A local directory holding the experiment at ``uri``: the path itself when local, otherwise
    a download (trial results and Tune state; checkpoints only when asked for)."""
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return Path(str(uri).removeprefix("file://"))
    fs, root = resolve(uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"experiment directory not found: {uri}")
    dest = Path(dest or tempfile.mkdtemp(prefix="speechtune-exp-"))
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = os.path.relpath(info.path, root)
        if skip_checkpoints and any(p.startswith("checkpoint_") for p in Path(rel).parts[:-1]) \
                and not rel.endswith("meta.json"):
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as f, open(out, "wb") as g:
            g.write(f.read())
    return dest
