"""Where a query's output goes: a local path, written whole or not at all, or an object store URL
(``s3://bucket/key``), written locally first and then uploaded through fsspec."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ttft_archive.ttft_core.errors import TTFTError


def is_remote(out: str | Path) -> bool:
    return "://" in str(out) and not str(out).startswith("file://")


def _local(out: str | Path) -> Path:
    return Path(str(out).removeprefix("file://"))


def _remote_fs(out: str, storage_options: dict | None):
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(out, **(storage_options or {}))
    except (ImportError, ValueError) as exc:  # an unknown protocol, or its package missing
        raise TTFTError(f"--out {out}: cannot write there ({str(exc).splitlines()[0]})") from None


def _make_folder(folder: Path, out: str | Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TTFTError(f"--out {out}: cannot create the folder {folder} ({exc.strerror or exc})") from None


def _upload(fs, pairs: list[tuple[Path, str]], out: str) -> None:
    try:
        for local, remote in pairs:
            fs.put_file(str(local), remote)
    except Exception as exc:  # s3fs raises botocore's and its own errors: all mean the same here
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TTFTError(f"--out {out}: upload failed ({reason})") from None


@contextmanager
def output_file(out: str | Path, storage_options: dict | None = None) -> Iterator[Path]:
    """A local path to write ``out`` to. Locally a temporary file beside it (its folder created
    when missing) that replaces ``out`` once the block ends without error; for a URL a temporary
    file uploaded to it then, with ``storage_options`` (fsspec's)."""
    if is_remote(out):
        fs, key = _remote_fs(str(out), storage_options)
        with tempfile.TemporaryDirectory(prefix="ttft-out-") as tmp:
            local = Path(tmp) / (Path(key).name or "out")
            yield local
            _upload(fs, [(local, key)], str(out))
        return
    path = _local(out)
    if path.is_dir():
        raise TTFTError(f"--out {out}: is a folder, not a file name")
    _make_folder(path.parent, out)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; this is an ordinary output
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def output_folder(out: str | Path, storage_options: dict | None = None) -> Iterator[Path]:
    """A local folder to write ``out``'s files into: ``out`` itself (created when missing), or for
    a URL a temporary folder whose files are uploaded under it once the block ends without error."""
    if not is_remote(out):
        path = _local(out)
        if path.exists() and not path.is_dir():
            raise TTFTError(f"--out {out}: is a file, not a folder")
        _make_folder(path, out)
        yield path
        return
    fs, prefix = _remote_fs(str(out), storage_options)
    with tempfile.TemporaryDirectory(prefix="ttft-out-") as tmp:
        yield Path(tmp)
        files = sorted(p for p in Path(tmp).iterdir() if p.is_file())
        _upload(fs, [(p, f"{prefix.rstrip('/')}/{p.name}") for p in files], str(out))


def output_names(out: str | Path, files: list[Path]) -> list[str]:
    """Where ``files`` written into ``output_folder(out)`` end up."""
    if is_remote(out):
        return [f"{str(out).rstrip('/')}/{p.name}" for p in files]
    return [str(p) for p in files]
