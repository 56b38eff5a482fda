"""Storage: a local path or an object-store URI (``s3://bucket/prefix``, ``gs://...``).

Experiments, published demo corpora, manifests, audio and the feature store all go through
here. pyarrow's filesystems do the work, the same ones Ray Tune writes through, so what Tune can
write here can be read back. For S3 the usual AWS variables apply (credentials, region, and
``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO or moto); nothing of them is
written into a job file or an experiment directory. pyarrow only (no torch, no Ray): the
analysis side reads experiments through this module too.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
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


def parent(uri: str) -> str:
    """The folder holding ``uri`` (a manifest's folder: relative audio paths resolve against it)."""
    if is_remote(uri):
        scheme, rest = str(uri).split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(str(uri)))


def resolve_against(base: str, path: str) -> str:
    """``path`` as written in a manifest: absolute paths and URIs as they are, relative ones
    against ``base`` (the manifest's folder, local or remote)."""
    if is_remote(path) or os.path.isabs(path):
        return path
    if is_remote(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
    return os.path.normpath(os.path.join(base, path))


def read_bytes(uri: str) -> bytes:
    """The whole object. FileNotFoundError when it is not there."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str) -> str | None:
    try:
        return read_bytes(uri).decode("utf-8")
    except FileNotFoundError:
        return None


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)  # readers never see half a file
    except BaseException:
        with contextlib.suppress(OSError):  # nothing half-written is left beside it either
            fs.delete_file(tmp)
        raise


def check_writable(uri: str, where: str) -> None:
    """An ``InputError`` naming ``where`` unless an object can be written under ``uri`` (and is
    removed again): a path that is a file, a read-only folder, an unreachable endpoint or missing
    credentials, found before anything runs rather than by the first checkpoint."""
    from asr_core.errors import InputError

    if not is_remote(uri):  # nothing is left: a refused job leaves no folder behind
        target = Path(normalize(uri))
        existing = next(a for a in (target, *target.parents) if a.exists())
        if not existing.is_dir():
            raise InputError(where, f"{uri} cannot be written: {existing} is a file, not a folder; nothing was run")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(where, f"{uri} cannot be written: {existing} is read-only; nothing was run")
        try:  # modes do not tell all (root under /proc, a full disk): a folder made and removed again
            import tempfile

            os.rmdir(tempfile.mkdtemp(prefix=".speechtune-write-check-", dir=existing))
        except OSError as e:
            raise InputError(where, f"{uri} cannot be written: no folder can be made in {existing} "
                                    f"({e.strerror or e}); nothing was run") from None
        return
    probe = join(uri, f".speechtune-write-check-{os.getpid()}")
    try:
        write_bytes(probe, b"")
        fs, path = resolve(probe)
        fs.delete_file(path)
    except (OSError, ValueError) as e:  # pyarrow's errors are OSError subclasses
        raise InputError(where, f"{uri} cannot be written ({type(e).__name__}: {e}); nothing was run") from None


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def files_under(uri: str) -> dict[str, int]:
    """Every file below ``uri``: path relative to it -> size in bytes ({} when there is none)."""
    import pyarrow.fs as pafs

    fs, root = resolve(uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return {}
    return {os.path.relpath(i.path, root): i.size for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if i.type == pafs.FileType.File}


def stats(uris: list[str]) -> dict[str, tuple[int, int]]:
    """Size and modification time (ns) of each file, (-1, -1) for one that is not there; one
    listing per folder for object storage rather than a request per file."""
    import pyarrow.fs as pafs

    out: dict[str, tuple[int, int]] = {}
    by_dir: dict[str, list[str]] = {}
    for u in uris:
        if is_remote(u):
            by_dir.setdefault(parent(u), []).append(u)
        else:
            try:
                st = os.stat(u)
                out[u] = (st.st_size, st.st_mtime_ns)
            except OSError:
                out[u] = (-1, -1)
    for d, members in by_dir.items():
        fs, root = resolve(d)
        listed = {}
        if fs.get_file_info(root).type == pafs.FileType.Directory:
            for i in fs.get_file_info(pafs.FileSelector(root)):
                listed[i.path] = (i.size or 0, i.mtime_ns or 0)
        for u in members:
            out[u] = listed.get(resolve(u)[1], (-1, -1))
    return out


def remove_dir(uri: str) -> None:
    """Delete a folder and everything below it (nothing when it is not there)."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def upload_dir(local: str | os.PathLike, uri: str) -> None:
    """Copy a local folder to ``uri`` (threads, as pyarrow's copy_files does)."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(Path(local).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs, use_threads=True)


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
                and not rel.endswith(("meta.json", "edits.json")):  # small: what reports read
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as f, open(out, "wb") as g:
            g.write(f.read())
    return dest
