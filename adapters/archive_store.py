"""The archive's storage: a Zarr store, local or fsspec (S3), whose faults are raised as one line
naming the archive (StorageError), with the crash-test hook. Knows stores and bytes; no layout."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
from pathlib import Path

from zarr.storage import FsspecStore, LocalStore, WrapperStore

from ttft_archive.ttft_core.errors import TTFTError


def open_store(url: str, storage_options: dict | None = None, read_only: bool = False) -> "_ArchiveStore":
    if "://" in url and not url.startswith("file://"):
        # other processes add items and tiles: a cached directory listing would hide them
        options = {"use_listings_cache": False, **(storage_options or {})}
        return _ArchiveStore(FsspecStore.from_url(url, storage_options=options, read_only=read_only), url)
    return _ArchiveStore(LocalStore(url.removeprefix("file://"), read_only=read_only), url)


class StorageError(TTFTError):
    """A request to the archive's storage failed: an endpoint that cannot be reached, server errors
    or timeouts left once the client's retries are spent, a full or read-only disk. One line naming
    the archive; whatever was written before it stays valid (see docs/reliability.md)."""


# Crash testing (tests/reliability/test_crashes.py, docs/reliability.md): with this variable set to
# N, the process kills itself with SIGKILL right after the N-th write or delete any archive store
# of the process has made. Unset (always, outside those tests), it costs one lookup per write.
KILL_AFTER_WRITES = "TTFT_KILL_AFTER_WRITES"
_writes_made = 0

# A local removal that finds an entry added meanwhile (an ingest still coding stores a tile record
# the completing one removes) starts again on what is there; the other's writes end.
_DELETE_ROUNDS = 8


def _remove_local_tree(path: Path) -> None:
    """Remove the directory tree at ``path``, leaving to another process whatever it removes
    meanwhile: two completions of one profile remove the same tile records at once, and
    shutil.rmtree alone stops at the first entry it lost."""

    def lost_to_another(function, name, exc_info) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    for rounds_left in reversed(range(_DELETE_ROUNDS)):
        try:
            shutil.rmtree(path, onerror=lost_to_another)
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY or not rounds_left:
                raise


def _count_write() -> None:
    global _writes_made
    limit = os.environ.get(KILL_AFTER_WRITES)
    if limit:
        _writes_made += 1
        if _writes_made >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)


def _storage_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is a fault of the storage rather than of the archive's contents: an OSError
    other than a missing key (zarr reads those as absent), or an error of the S3 client stack."""
    if isinstance(exc, FileNotFoundError) or isinstance(exc, TTFTError):
        return False
    if isinstance(exc, OSError):
        return True
    return any(t.__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs") for t in type(exc).__mro__)


class _ArchiveStore(WrapperStore):
    """The archive's Zarr store, local or fsspec, with its storage faults raised as StorageError
    (one line naming the archive, not a client's traceback) and the crash-test hook."""

    def __init__(self, store, url: str):
        super().__init__(store)
        self.url = url

    @contextlib.contextmanager
    def _faults(self, doing: str):
        """A storage fault inside raised as StorageError, one line naming the archive and ``doing``;
        anything else (a missing key, an archive's own error) as it was."""
        try:
            yield
        except Exception as exc:
            if _storage_fault(exc):
                message = (str(exc).strip().splitlines() or [""])[0]
                raise StorageError(f"{self.url}: storage {doing} failed ({type(exc).__name__}: {message})") from None
            raise

    def with_read_only(self, read_only: bool = False) -> "_ArchiveStore":
        return _ArchiveStore(self._store.with_read_only(read_only), self.url)

    async def get(self, key, prototype, byte_range=None):
        with self._faults(f"read of {key}"):
            return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        with self._faults("read"):
            return await self._store.get_partial_values(prototype, key_ranges)

    async def exists(self, key):
        with self._faults(f"lookup of {key}"):
            return await self._store.exists(key)

    async def set(self, key, value):
        with self._faults(f"write of {key}"):
            await self._store.set(key, value)
        _count_write()

    async def set_if_not_exists(self, key, value):
        with self._faults(f"write of {key}"):
            await self._store.set_if_not_exists(key, value)
        _count_write()

    async def delete(self, key):
        with self._faults(f"delete of {key}"):
            await self._store.delete(key)
        _count_write()

    async def delete_dir(self, prefix):
        with self._faults(f"delete of {prefix}"):
            if isinstance(self._store, LocalStore):
                self._check_writable()
                _remove_local_tree(self._store.root / prefix)
            else:
                await self._store.delete_dir(prefix)
        _count_write()

    async def is_empty(self, prefix):
        with self._faults(f"listing of {prefix or '/'}"):
            return await self._store.is_empty(prefix)

    def list(self):
        return self._listing(self._store.list(), "/")

    def list_prefix(self, prefix):
        return self._listing(self._store.list_prefix(prefix), prefix)

    def list_dir(self, prefix):
        return self._listing(self._store.list_dir(prefix), prefix)

    async def _listing(self, keys, prefix: str):
        with self._faults(f"listing of {prefix or '/'}"):
            async for key in keys:
                yield key
