"""The Zarr archive (zarr-python 3, format v3), in a local folder or under an s3:// prefix.

Layout, version 2 (also in docs/formats.md):

    <root>/                       attrs: format "ttft-archive", version, uid
      items/<item id>/            attrs: source metadata, tile grid, checksum
        headers    (slices,)      variable-length bytes (DICOM items only)
        profiles/<profile>/       attrs: layout 2, settings, checksum; complete and index_sha256
                                  (written last, once every tile is in and the index is written)
          tiles    (slices, rows, cols) variable-length bytes: one tile record per chunk (below)
          index    (1,) variable-length bytes: the consolidated index, written at completion

A tile record is one self-describing byte string: the tile's item, profile, position and key,
its state, task fidelity and TTFT figures, its nodata mask and its bitstream, under one CRC32C.
Every tile is its own chunk, written in one request, so writers of different tiles never share
a chunk and a tile is either all there or (a torn or foreign chunk) refused and coded again.
The index holds every tile's figures, key and record checksum: listings and summaries of a
complete profile read it in one request.

Version-1 archives (one array per figure, see ``_ProfileV1``) are read as before; their
profiles are not written to. Knows Zarr and bytes; no Prefect.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import struct
import uuid
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import google_crc32c
import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from ttft_archive.ttft_core import bitstream
from ttft_archive.ttft_core.errors import BitstreamError, TTFTError

FORMAT = "ttft-archive"
VERSION = 2
MISSING, CODED, EMPTY = 0, 1, 2

RECORD_MAGIC, INDEX_MAGIC = b"TTFR", b"TTFI"
RECORD_VERSION = INDEX_VERSION = 2
MASK_NONE, MASK_DATASET, MASK_PER_BAND = 0, 1, 2  # GDAL: all valid, one mask for all bands, per band

_FIGURES = {  # name: (dtype, fill value)
    "state": ("uint8", MISSING),
    "nbytes": ("int64", 0),
    "fidelity": ("float64", math.nan),
    "ttft_steps": ("int32", 0),
    "ttft_seconds": ("float32", 0.0),
}
_COMPLETION_ROUNDS = 5  # index, marker and a read back: again while other writers change tiles
_RECORD_FIXED = struct.Struct("<4sB3IBdif")  # magic, version, slice/row/col, state, fidelity, steps, seconds


@dataclass(frozen=True)
class TileGrid:
    slices: int
    rows: int
    cols: int
    tile_height: int
    tile_width: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.slices, self.rows, self.cols)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TileRecord:
    data: bytes
    key: str
    fidelity: float = math.nan
    ttft_steps: int = 0
    ttft_seconds: float = 0.0
    nodata_mask: bytes = b""  # packed where the source held nodata inside a coded tile; b"": none


# ---- the tile record: one self-describing, checksummed byte string per tile ----


@dataclass(frozen=True)
class StoredTile:
    """A tile record as stored (version 2): what binds a chunk to its place and what it holds."""

    item: str
    profile: str
    index: tuple[int, int, int]
    key: str
    state: int
    data: bytes = b""  # the tile bitstream (CODED only)
    fidelity: float = math.nan
    ttft_steps: int = 0
    ttft_seconds: float = 0.0
    mask_kind: int = MASK_NONE
    mask: bytes = b""  # zlib of packbits: one (h, w) plane (dataset), or planes per band
    crc: int = field(default=0, compare=False)

    @property
    def nbytes(self) -> int:
        return len(self.data)


def pack_record(tile: StoredTile) -> bytes:
    body = (
        _RECORD_FIXED.pack(
            RECORD_MAGIC,
            RECORD_VERSION,
            *tile.index,
            tile.state,
            tile.fidelity,
            tile.ttft_steps,
            tile.ttft_seconds,
        )
        + _str(tile.item)
        + _str(tile.profile)
        + _key(tile.key)
        + struct.pack("<BI", tile.mask_kind, len(tile.mask))
        + tile.mask
        + struct.pack("<I", len(tile.data))
        + tile.data
    )
    return body + struct.pack("<I", google_crc32c.value(body))


def unpack_record(data: bytes) -> StoredTile:
    """Parse and check a tile record; any defect raises TTFTError (never another exception)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TTFTError(f"a tile record must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _RECORD_FIXED.size + 4:
        raise TTFTError(f"tile record of {len(data)} bytes is too short (torn or not a record)")
    if data[:4] != RECORD_MAGIC:
        raise TTFTError(f"not a tile record: magic {data[:4]!r}, expected {RECORD_MAGIC!r}")
    if data[4] != RECORD_VERSION:
        raise TTFTError(f"tile record version {data[4]} is not supported (this reader knows {RECORD_VERSION})")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if google_crc32c.value(body) != crc:
        raise TTFTError("tile record checksum (CRC32C) mismatch: the chunk is corrupt or truncated")
    r = _Reader(body, "tile record")
    _, _, s, row, col, state, fidelity, steps, seconds = r.unpack(_RECORD_FIXED)
    item, profile, key = r.string(), r.string(), r.key()
    mask_kind, mask_len = r.unpack(struct.Struct("<BI"))
    mask = r.take(mask_len)
    tile_data = r.take(r.unpack(struct.Struct("<I"))[0])
    if r.pos != len(body):
        raise TTFTError(f"tile record has {len(body) - r.pos} unexpected trailing bytes")
    if state not in (CODED, EMPTY):
        raise TTFTError(f"tile record holds an unknown state {state}")
    if mask_kind not in (MASK_NONE, MASK_DATASET, MASK_PER_BAND) or (mask_kind == MASK_NONE) != (not mask):
        raise TTFTError(f"tile record holds an unknown nodata mask kind {mask_kind}")
    if state == EMPTY and (tile_data or mask):
        raise TTFTError("tile record of an empty tile holds data")
    if state == CODED and not tile_data:
        raise TTFTError("tile record of a coded tile holds no bitstream")
    return StoredTile(
        item, profile, (s, row, col), key, state, tile_data, fidelity, steps, seconds, mask_kind, mask, crc
    )


def encode_mask(missing: np.ndarray) -> tuple[int, bytes]:
    """(kind, bytes) of where a tile (bands, h, w) held nodata, as GDAL sees masks: nothing when
    all is valid, one plane when every band agrees, and else a plane of where all bands are
    nodata followed by each band's differences from it (sparse: legitimate zeros of one band)."""
    if not missing.any():
        return MASK_NONE, b""
    if (missing == missing[0]).all():
        return MASK_DATASET, zlib.compress(np.packbits(missing[0]).tobytes(), 9)
    common = missing.all(0)
    planes = np.concatenate([common[None], missing ^ common])
    return MASK_PER_BAND, zlib.compress(np.packbits(planes).tobytes(), 9)


def decode_mask(kind: int, packed: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """The (bands, h, w) boolean nodata mask ``encode_mask`` packed; TTFTError when it does not fit."""
    bands, h, w = shape
    if kind == MASK_NONE:
        return np.zeros(shape, bool)
    planes = 1 if kind == MASK_DATASET else bands + 1
    count = planes * h * w
    try:
        raw = zlib.decompress(packed)
    except zlib.error as exc:
        raise TTFTError(f"nodata mask does not inflate ({exc})") from None
    if len(raw) != (count + 7) // 8:
        raise TTFTError(f"nodata mask holds {len(raw)} bytes, not the {(count + 7) // 8} of {planes} planes")
    bits = np.unpackbits(np.frombuffer(raw, np.uint8), count=count).astype(bool).reshape(planes, h, w)
    if kind == MASK_DATASET:
        return np.broadcast_to(bits, shape).copy()
    return bits[1:] ^ bits[0]


def _pack_missing(missing: np.ndarray) -> bytes:
    """The version-1 form of a mask (per band, packed and deflated; b"": all valid), which
    ``adapters.raster.unpack_missing`` reads."""
    if not missing.any():
        return b""
    return zlib.compress(np.packbits(missing).tobytes(), 6)


def _unpack_missing(packed: bytes, shape: tuple[int, ...]) -> np.ndarray:
    bits = np.frombuffer(zlib.decompress(packed), np.uint8)
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


# ---- the consolidated index: a complete profile's figures, keys and record checksums ----


def pack_index(item: str, profile: str, shape: tuple[int, int, int], figures: dict, keys: list[str], crcs) -> bytes:
    body = _str(item) + _str(profile) + struct.pack("<3I", *shape)
    for name, (dtype, _) in _FIGURES.items():
        body += np.ascontiguousarray(figures[name], dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    body += np.ascontiguousarray(crcs, dtype="<u4").tobytes()
    body += b"".join(_str(k) for k in keys)
    out = INDEX_MAGIC + bytes([INDEX_VERSION]) + zlib.compress(body, 9)
    return out + struct.pack("<I", google_crc32c.value(out))


def unpack_index(data: bytes) -> tuple[str, str, tuple[int, int, int], dict, list[str], np.ndarray]:
    """(item, profile, shape, figures, keys, record crcs) of an index; TTFTError on any defect."""
    data = bytes(data)
    if len(data) < 9 or data[:4] != INDEX_MAGIC or data[4] != INDEX_VERSION:
        raise TTFTError("profile index is not a version-2 index (torn, or another object)")
    if google_crc32c.value(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise TTFTError("profile index checksum (CRC32C) mismatch")
    try:
        body = zlib.decompress(data[5:-4])
    except zlib.error as exc:
        raise TTFTError(f"profile index does not inflate ({exc})") from None
    r = _Reader(body, "profile index")
    item, profile = r.string(), r.string()
    shape = r.unpack(struct.Struct("<3I"))
    n = math.prod(shape)
    figures = {}
    for name, (dtype, _) in _FIGURES.items():
        dt = np.dtype(dtype).newbyteorder("<")
        figures[name] = np.frombuffer(r.take(n * dt.itemsize), dt).astype(dtype).reshape(shape)
    crcs = np.frombuffer(r.take(4 * n), "<u4").astype(np.uint32).reshape(shape)
    keys = [r.string() for _ in range(n)]
    if r.pos != len(body):
        raise TTFTError("profile index has unexpected trailing bytes")
    return item, profile, tuple(shape), figures, keys, crcs


# ---- the archive ----


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

    def _fault(self, exc: BaseException, doing: str) -> StorageError:
        message = (str(exc).strip().splitlines() or [""])[0]
        return StorageError(f"{self.url}: storage {doing} failed ({type(exc).__name__}: {message})")

    def with_read_only(self, read_only: bool = False) -> "_ArchiveStore":
        return _ArchiveStore(self._store.with_read_only(read_only), self.url)

    async def get(self, key, prototype, byte_range=None):
        try:
            return await self._store.get(key, prototype, byte_range)
        except Exception as exc:
            if _storage_fault(exc):
                raise self._fault(exc, f"read of {key}") from None
            raise

    async def get_partial_values(self, prototype, key_ranges):
        try:
            return await self._store.get_partial_values(prototype, key_ranges)
        except Exception as exc:
            if _storage_fault(exc):
                raise self._fault(exc, "read") from None
            raise

    async def exists(self, key):
        try:
            return await self._store.exists(key)
        except Exception as exc:
            if _storage_fault(exc):
                raise self._fault(exc, f"lookup of {key}") from None
            raise

    async def set(self, key, value):
        try:
            await self._store.set(key, value)
        except Exception as exc:
            if _storage_fault(exc):
                raise self._fault(exc, f"write of {key}") from None
            raise
        _count_write()

    async def set_if_not_exists(self, key, value):
        try:
            await self._store.set_if_not_exists(key, value)
        except Exception as exc:
            if _storage_fault(exc):
                raise self._fault(exc, f"write of {key}") from None
            raise
        _count_write()

    async def delete(self, key):
        try:
            await self._store.delete(key)
        except Exception as exc:
            if _storage_fault(exc):
                raise self._fault(exc, f"delete of {key}") from None
            raise
        _count_write()

    async def delete_dir(self, prefix):
        try:
            await self._store.delete_dir(prefix)
        except Exception as exc:
            if _storage_fault(exc):
                raise self._fault(exc, f"delete of {prefix}") from None
            raise
        _count_write()

    async def is_empty(self, prefix):
        try:
            return await self._store.is_empty(prefix)
        except Exception as exc:
            if _storage_fault(exc):
                raise self._fault(exc, f"listing of {prefix or '/'}") from None
            raise

    def list(self):
        return self._listing(self._store.list(), "/")

    def list_prefix(self, prefix):
        return self._listing(self._store.list_prefix(prefix), prefix)

    def list_dir(self, prefix):
        return self._listing(self._store.list_dir(prefix), prefix)

    async def _listing(self, keys, prefix: str):
        try:
            async for key in keys:
                yield key
        except Exception as exc:
            if _storage_fault(exc):
                raise self._fault(exc, f"listing of {prefix or '/'}") from None
            raise


class Archive:
    def __init__(self, url: str, storage_options: dict | None = None, create: bool = True):
        """``create=False`` opens an existing archive read-only (queries, listings, checks)."""
        self.url = url
        store = open_store(url, storage_options, read_only=not create)
        # a new root is written with its attributes in one request: another process creating the
        # same archive at that moment never sees a root that is not yet a ttft-archive
        self.root = _open_root(store, url, create, {"format": FORMAT, "version": VERSION, "uid": uuid.uuid4().hex})
        fmt = self.root.attrs.get("format")
        if fmt is None and create and not list(self.root.keys()):
            self.root.attrs.update({"format": FORMAT, "version": VERSION, "uid": uuid.uuid4().hex})
        elif fmt != FORMAT:
            raise TTFTError(f"{url}: not a {FORMAT} (format attribute {fmt!r})")
        elif self.root.attrs.get("version", 0) > VERSION:
            raise TTFTError(
                f"{url}: archive version {self.root.attrs['version']} is newer than this reader ({VERSION})"
            )

    @property
    def version(self) -> int:
        return int(self.root.attrs.get("version", 1))

    @property
    def uid(self) -> str:
        """Made anew with each archive: results cached for one archive never stand for another one
        created later at the same address."""
        return self.root.attrs.get("uid") or self.url

    # ---- inbox ledger: which arrivals were ingested, as what ----
    def inbox_record(self, source: str) -> dict | None:
        group = self.root.get(f"inbox/{_ledger_name(source)}")
        return dict(group.attrs) if group is not None else None

    def record_inbox(self, source: str, fingerprint: str, items: list[str]) -> None:
        """Written after the source's items are complete: a crash before it means another try."""
        group = _require_group(_require_group(self.root, "inbox"), _ledger_name(source))
        group.attrs.update({"source": source, "fingerprint": fingerprint, "items": items})

    # ---- items ----
    def item_ids(self, unfinished: bool = False) -> list[str]:
        """Items whose creation finished; with ``unfinished``, only those begun and never
        finished (a crash while creating one; the next ingest finishes it)."""
        items = self.root.get("items")
        if items is None:
            return []
        with _debris_ignored():
            return sorted(name for name, group in items.groups() if ("grid" in group.attrs) != unfinished)

    def create_item(self, item_id: str, source: dict, grid: TileGrid, slice_headers: list[str] | None = None) -> None:
        """Create an item, or check that an existing one describes the same source and grid.
        ``slice_headers`` (one text per slice, a DICOM header say) are kept beside the tiles."""
        _check_name(item_id, "item id")
        items = _require_group(self.root, "items")
        if item_id in items and "grid" in items[item_id].attrs:
            attrs = items[item_id].attrs
            if attrs.get("source") != source or attrs.get("grid") != grid.to_dict():
                raise TTFTError(f"{self.url}: item {item_id!r} exists with another source or tile grid")
            return
        # new, or a creation interrupted before its attributes: (re)write it whole
        group = _require_group(items, item_id)
        attrs = {"source": source, "grid": grid.to_dict()}
        if slice_headers is not None:
            encoded = [h.encode() for h in slice_headers]
            headers = _bytes_array(group, "headers", (grid.slices,), (grid.slices,), overwrite=True)
            headers[:] = np.array(encoded, dtype=object)
            attrs["headers_crc32c"] = _headers_crc(encoded)
        # attributes last: an item whose attributes are missing was not finished and is recreated
        group.attrs.update(attrs | {"checksum": _attrs_checksum(item_id, attrs)})

    def item(self, item_id: str) -> dict:
        group = self._item_group(item_id)
        attrs = dict(group.attrs)
        if "grid" not in attrs:
            raise TTFTError(f"{self.url}: item {item_id!r} was not completely created (ingest it again)")
        if "checksum" in attrs:  # version 2: source, grid and headers under one checksum
            stored = attrs.pop("checksum")
            if _attrs_checksum(item_id, attrs) != stored:
                raise TTFTError(f"{self.url}: item {item_id!r}: attributes do not match their checksum (edited?)")
        return attrs

    def _item_group(self, item_id: str) -> zarr.Group:
        group = self.root.get(f"items/{item_id}") if _usable(item_id) else None
        if not isinstance(group, zarr.Group):
            raise TTFTError(f"{self.url}: no item {item_id!r}")
        return group

    def slice_headers(self, item_id: str, indices: list[int]) -> dict[int, str]:
        attrs = self.item(item_id)
        try:
            headers = [bytes(h) for h in self.root["items"][item_id]["headers"][:]]
        except StorageError:
            raise
        except Exception as exc:
            raise TTFTError(f"{self.url}: item {item_id!r}: slice headers unreadable ({type(exc).__name__})") from None
        if "headers_crc32c" in attrs and _headers_crc(headers) != attrs["headers_crc32c"]:
            raise TTFTError(f"{self.url}: item {item_id!r}: slice headers do not match their checksum")
        return {i: headers[i].decode() for i in indices}

    def grid(self, item_id: str) -> TileGrid:
        return TileGrid(**self.item(item_id)["grid"])

    # ---- profiles ----
    def profile_names(self, item_id: str, unfinished: bool = False) -> list[str]:
        """The item's profiles whose creation finished; with ``unfinished``, only those that were
        begun and never finished (a crash while creating; the next ingest finishes them)."""
        self.item(item_id)
        group = self.root["items"][item_id]
        if "profiles" not in group:
            return []
        profiles = group["profiles"]
        with _debris_ignored():
            names = sorted(profiles.group_keys())
        return [n for n in names if ("settings" in profiles[n].attrs) != unfinished]

    def profile(self, item_id: str, name: str, settings: dict | None = None) -> "Profile | _ProfileV1":
        """Open a profile; with ``settings``, create it (or check the existing one has them). A
        profile whose creation was interrupted is finished here."""
        grid = self.grid(item_id)
        _check_name(name, "profile name")
        label = f"{item_id}/{name}"
        if settings is None:
            group = self.root.get(f"items/{item_id}/profiles/{name}")
            if group is None:
                raise TTFTError(f"{self.url}: item {item_id!r} has no profile {name!r}")
        else:
            group = _require_group(_require_group(self.root["items"][item_id], "profiles"), name)
        attrs = group.attrs
        if "settings" not in attrs:
            if settings is None:
                raise TTFTError(f"{self.url}: profile {label} was not completely created (ingest it again)")
            return self._finish_profile(group, item_id, name, grid, settings)
        if attrs.get("layout", 1) == 1:
            if settings is not None and attrs.get("settings") != settings:
                raise TTFTError(f"{self.url}: profile {label} exists with other settings")
            return _ProfileV1(group, label, self.url)
        profile = Profile(group, item_id, name, self.url)
        profile.check_attrs()
        if settings is not None and profile.settings != settings:
            raise TTFTError(f"{self.url}: profile {label} exists with other settings")
        return profile

    def _finish_profile(self, group: zarr.Group, item_id: str, name: str, grid: TileGrid, settings: dict) -> "Profile":
        """Create a profile, or finish one whose creation stopped before its attributes: its tile
        array first (kept if it is there with the grid's shape: its records name their settings'
        keys, and tiles of other settings are coded again), its attributes last."""
        with _debris_ignored():
            present = set(group.array_keys())
        tiles = group["tiles"] if "tiles" in present else None
        if tiles is None:
            try:  # never overwrite: another ingest creating the same profile may be writing tiles into it
                _bytes_array(group, "tiles", grid.shape, (1, 1, 1), compressed=False)
            except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError):
                pass
        elif tiles.shape != grid.shape or tiles.metadata.codecs[1:]:
            _bytes_array(group, "tiles", grid.shape, (1, 1, 1), overwrite=True, compressed=False)
        for stale in present - {"tiles"}:  # an old index, or arrays of an interrupted version-1 creation
            del group[stale]
        if self.version < VERSION:  # a version-1 archive that now holds a version-2 profile
            self.root.attrs["version"] = VERSION
        attrs = {"layout": VERSION, "settings": settings}
        group.attrs.update(attrs | {"checksum": _attrs_checksum(f"{item_id}/{name}", attrs), "complete": False})
        return Profile(group, item_id, name, self.url)

    def verify(self, item: str | None = None, check_settings: Callable[[dict], object] | None = None) -> list[str]:
        """Every profile of every item (or of ``item``): one line per problem, each naming the
        archive, the item and profile, and the tile where there is one. ``check_settings`` (a
        profile's settings; raises TTFTError) checks what the archive cannot see by itself, such
        as that the codec and adapter weights present are the ones the profile was coded with."""
        problems = []
        try:
            items = [item] if item else self.item_ids()
            problems += [
                f"{self.url}: item {i!r} was not completely created (ingest it again)"
                for i in ([] if item else self.item_ids(unfinished=True))
            ]
        except Exception as exc:
            return [f"{self.url}: items unreadable ({type(exc).__name__}: {exc})"]
        for item_id in items:
            try:
                names = self.profile_names(item_id)
                unfinished = self.profile_names(item_id, unfinished=True)
            except TTFTError as exc:
                problems.append(str(exc))
                continue
            problems += [
                f"{self.url}: profile {item_id}/{n} was not completely created (ingest it again)" for n in unfinished
            ]
            for name in names:
                try:
                    profile = self.profile(item_id, name)
                except TTFTError as exc:
                    problems.append(str(exc))
                    continue
                if check_settings is not None and "coders" in profile.settings:
                    try:
                        check_settings(profile.settings)
                    except TTFTError as exc:
                        problems.append(f"{self.url}: profile {item_id}/{name}: {exc}")
                problems += profile.check()
        return problems


class Profile:
    """A version-2 profile: one tile record per chunk, and a consolidated index once complete."""

    version = 2

    def __init__(self, group: zarr.Group, item: str, name: str, url: str = ""):
        self.group = group
        self.item, self.name, self.url = item, name, url
        self.label = f"{item}/{name}"
        self._index: tuple | None = None  # (figures, keys, crcs) of the index, once read
        self._last: StoredTile | None = None  # the last record read: query reads tile then mask
        self._tiles: zarr.Array | None = None

    @property
    def tiles(self) -> zarr.Array:
        if self._tiles is None:
            self._tiles = self.group["tiles"]
        return self._tiles

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.tiles.shape

    @property
    def settings(self) -> dict:
        return self.group.attrs["settings"]

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False)) and self.group.attrs.get("index_sha256") is not None

    def check_attrs(self) -> None:
        attrs = dict(self.group.attrs)
        stored = attrs.get("checksum")
        mine = {k: attrs.get(k) for k in ("layout", "settings")}
        if stored is None or _attrs_checksum(self.label, mine) != stored:
            raise TTFTError(f"{self.url}: profile {self.label}: attributes do not match their checksum (edited?)")

    def _where(self, index) -> str:
        return f"{self.url}: tile {self.label}{[int(i) for i in index]}"

    # ---- reading ----
    def record(self, index: tuple[int, int, int]) -> StoredTile | None:
        """The tile's record, checked (CRC32C, bound to this item, profile, place); None when no
        record was written. Raises TTFTError naming archive, profile and tile."""
        index = tuple(int(i) for i in index)
        try:
            raw = bytes(self.tiles[_at(index)].reshape(-1)[0])
        except (OSError, StorageError):  # the storage failed, not the chunk: never count it as missing
            raise
        except Exception as exc:  # a chunk that zarr cannot decode: name the tile, not the codec stack
            raise TTFTError(f"{self._where(index)}: stored chunk is unreadable ({type(exc).__name__})") from None
        if not raw:
            return None
        try:
            tile = unpack_record(raw)
        except TTFTError as exc:
            raise TTFTError(f"{self._where(index)}: {exc}") from None
        if (tile.item, tile.profile, tile.index) != (self.item, self.name, index):
            raise TTFTError(
                f"{self._where(index)}: the chunk holds the record of tile "
                f"{tile.item}/{tile.profile}{list(tile.index)} (chunks swapped or copied)"
            )
        self._last = tile
        return tile

    def _record_or_none(self, index) -> StoredTile | None:
        """The record, or None when it is absent or cannot be trusted (it is coded again)."""
        try:
            return self.record(index)
        except StorageError:
            raise
        except TTFTError:
            return None

    def key(self, index: tuple[int, int, int]) -> str:
        """The key the tile's record was made from; "" when it is missing or cannot be trusted,
        so that the next ingest codes it again (which mends a damaged tile)."""
        tile = self._record_or_none(index)
        return tile.key if tile else ""

    def read_tile(self, index: tuple[int, int, int]) -> bytes | None:
        """The tile's bitstream, checked (record and bitstream CRC32C, binding); None for an empty tile."""
        tile = self.record(index)
        if tile is None:
            raise TTFTError(f"{self._where(index)} is missing from the archive")
        if tile.state == EMPTY:
            return None
        try:
            bitstream.unpack(tile.data)
        except BitstreamError as exc:
            raise TTFTError(f"{self._where(index)}: {exc}") from None
        return tile.data

    def nodata_missing(self, index: tuple[int, int, int]) -> np.ndarray | None:
        """(bands, h, w): True where the source held nodata inside a coded tile; None when empty."""
        index = tuple(int(i) for i in index)
        tile = self._last if self._last is not None and self._last.index == index else self.record(index)
        self._last = None
        if tile is None:
            raise TTFTError(f"{self._where(index)} is missing from the archive")
        if tile.state == EMPTY:
            return None
        try:
            header = bitstream.unpack(tile.data).header
        except BitstreamError as exc:
            raise TTFTError(f"{self._where(index)}: {exc}") from None
        try:
            return decode_mask(tile.mask_kind, tile.mask, (header.channels, header.height, header.width))
        except TTFTError as exc:
            raise TTFTError(f"{self._where(index)}: {exc}") from None

    def nodata_mask(self, index: tuple[int, int, int]) -> bytes:
        """The mask in the form ``adapters.raster.unpack_missing`` reads (b"": all valid)."""
        missing = self.nodata_missing(index)
        return b"" if missing is None else _pack_missing(missing)

    def missing(self) -> list[tuple[int, int, int]]:
        """Tiles without a record that can be trusted (ingest again to code them)."""
        return [i for i in self.indices() if self._record_or_none(i) is None]

    def figures(self) -> dict[str, np.ndarray]:
        """Each tile's state, nbytes, fidelity, TTFT steps and seconds: from the index when the
        profile is complete (one read), else from every tile's record (a tile whose record cannot
        be trusted counts as missing)."""
        if self.complete:
            return {k: v.copy() for k, v in self._read_index(strict=True)[0].items()}
        figures = {name: np.full(self.shape, fill, dtype) for name, (dtype, fill) in _FIGURES.items()}
        for index in self.indices():
            tile = self._record_or_none(index)
            if tile is not None:
                for name, value in _figures_of(tile).items():
                    figures[name][index] = value
        return figures

    def indices(self) -> Iterator[tuple[int, int, int]]:
        yield from np.ndindex(*self.shape)

    def _read_index(self, strict: bool) -> tuple | None:
        """(figures, keys, crcs) of the consolidated index, checked; a defect raises TTFTError, or
        gives None when not ``strict``."""
        if self._index is None:
            try:
                self._index = self._load_index()
            except TTFTError:
                if strict:
                    raise
                return None
        return self._index

    def _load_index(self) -> tuple:
        where = f"{self.url}: profile {self.label}"
        try:
            raw = bytes(self.group["index"][:][0])
        except StorageError:
            raise
        except Exception as exc:
            raise TTFTError(f"{where}: index unreadable ({type(exc).__name__})") from None
        if hashlib.sha256(raw).hexdigest() != self.group.attrs.get("index_sha256"):
            raise TTFTError(f"{where}: index is not the one its completion marker names")
        try:
            item, name, shape, figures, keys, crcs = unpack_index(raw)
        except TTFTError as exc:
            raise TTFTError(f"{where}: {exc}") from None
        if (item, name, shape) != (self.item, self.name, tuple(self.shape)):
            raise TTFTError(f"{where}: index belongs to {item}/{name} of shape {list(shape)}")
        return figures, keys, crcs

    # ---- writing ----
    def write_tile(self, index: tuple[int, int, int], record: TileRecord) -> bool:
        """Store one coded tile in one chunk write. Returns False, writing nothing, when the same
        key is already there."""
        if self.key(index) == record.key:
            return False
        try:
            header = bitstream.unpack(record.data).header
        except BitstreamError as exc:
            raise TTFTError(f"{self._where(index)}: refusing to store a bad bitstream ({exc})") from None
        shape = (header.channels, header.height, header.width)
        if record.nodata_mask:
            try:
                missing = _unpack_missing(record.nodata_mask, shape)
            except (zlib.error, ValueError) as exc:
                raise TTFTError(f"{self._where(index)}: nodata mask does not fit the tile {shape} ({exc})") from None
            kind, mask = encode_mask(missing)
        else:
            kind, mask = MASK_NONE, b""
        tile = StoredTile(
            self.item,
            self.name,
            tuple(int(i) for i in index),
            record.key,
            CODED,
            bytes(record.data),
            float(record.fidelity),
            int(record.ttft_steps),
            float(record.ttft_seconds),
            kind,
            mask,
        )
        self._store(tile)
        return True

    def write_empty(self, index: tuple[int, int, int], key: str) -> bool:
        """Record a tile that holds no data (all nodata, air): nothing is coded for it."""
        if self.key(index) == key:
            return False
        self._store(StoredTile(self.item, self.name, tuple(int(i) for i in index), key, EMPTY))
        return True

    def _store(self, tile: StoredTile) -> None:
        if self.group.attrs.get("complete"):  # a complete profile changes: its index no longer holds
            self.group.attrs.update({"complete": False, "index_sha256": None})
        self._index = self._last = None
        self.tiles[_at(tile.index)] = np.array(pack_record(tile), dtype=object).reshape(1, 1, 1)

    def mark_complete(self) -> None:
        """Check every tile's record, write the consolidated index, then the completion marker;
        nothing when the stored index and marker already hold what the records say (a stale
        index, say of an interrupted completion, is made again). Another ingest of the same
        profile may store a tile while this one completes it (tuned twice, two records of a tile
        differ at least in their TTFT seconds): the records are read once more after the marker,
        and the index made again until it holds what is stored."""
        for _ in range(_COMPLETION_ROUNDS):
            figures, keys, crcs = self._gather()
            blob = pack_index(self.item, self.name, self.shape, figures, keys, crcs)
            sha = hashlib.sha256(blob).hexdigest()
            stored = self._reopened()
            if _marker(stored) == sha and self._stored_index() == blob:
                self.group, self._index = stored, None  # nothing to write; this object sees it complete
                return
            if "index" not in self.group:
                try:
                    _bytes_array(self.group, "index", (1,), (1,), compressed=False)
                except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError):
                    pass  # another writer completing the same profile made it first
            self.group["index"][:] = np.array([blob], dtype=object)
            self.group.attrs.update({"index_sha256": sha, "complete": True})
            self._index = None
            if np.array_equal(self._gather()[2], crcs):
                return
        raise TTFTError(
            f"{self.url}: profile {self.label} kept changing while it was completed (other ingests of it "
            f"running?): ingest it again once they end"
        )

    def _gather(self) -> tuple[dict, list[str], np.ndarray]:
        """Every tile's figures, key and record CRC32C, read from its record; TTFTError naming the
        tiles still missing."""
        shape = self.shape
        figures = {name: np.full(shape, fill, dtype) for name, (dtype, fill) in _FIGURES.items()}
        keys, crcs, missing = [], np.zeros(shape, np.uint32), []
        for index in self.indices():
            tile = self._record_or_none(index)
            if tile is None:
                missing.append(index)
                keys.append("")
                continue
            for name, value in _figures_of(tile).items():
                figures[name][index] = value
            keys.append(tile.key)
            crcs[index] = tile.crc
        if missing:
            raise TTFTError(
                f"{self.url}: profile {self.label} still misses {len(missing)} tiles, first {list(missing[0])} "
                f"(ingest it again)"
            )
        return figures, keys, crcs

    def _reopened(self) -> zarr.Group:
        """The profile's group as stored now: this object's attributes may be older (another
        process may have completed the profile since it was opened)."""
        return zarr.open_group(self.group.store, path=self.group.path, mode="r+")

    def _stored_index(self) -> bytes | None:
        try:
            return bytes(self.group["index"][:][0]) if "index" in self.group else None
        except StorageError:
            raise
        except Exception:
            return None

    # ---- checking ----
    def check(self) -> list[str]:
        """Every tile's record and bitstream (checksums, binding to this profile and its settings'
        codec and adapter), and the index against the records: one line per problem."""
        problems = []
        coders = self.settings.get("coders", {}) if isinstance(self.settings, dict) else {}
        index_data = None
        if not self.complete:
            problems.append(f"{self.url}: profile {self.label}: incomplete ({len(self.missing())} tiles missing)")
        else:
            try:
                index_data = self._read_index(strict=True)
            except TTFTError as exc:
                problems.append(str(exc))
        for index in self.indices():
            try:
                tile = self.record(index)
            except TTFTError as exc:
                problems.append(str(exc))
                continue
            if tile is None:
                if self.complete:
                    problems.append(f"{self._where(index)} is missing from the archive")
                continue
            if tile.state == CODED:
                problems += self._check_coded(index, tile, coders)
            if index_data is not None:
                figures, keys, crcs = index_data
                flat = int(np.ravel_multi_index(index, self.shape))
                stored = {name: figures[name][index] for name in _FIGURES}
                if keys[flat] != tile.key or int(crcs[index]) != tile.crc or not _same_figures(stored, tile):
                    problems.append(f"{self._where(index)}: the profile index does not match the tile's record")
        return problems

    def _check_coded(self, index, tile: StoredTile, coders: dict) -> list[str]:
        try:
            header = bitstream.unpack(tile.data).header
            decode_mask(tile.mask_kind, tile.mask, (header.channels, header.height, header.width))
        except TTFTError as exc:
            return [f"{self._where(index)}: {exc}"]
        coder = coders.get(str(header.channels))
        if coders and coder is None:
            return [f"{self._where(index)}: {header.channels}-channel tile, but the profile has no such codec"]
        if coder is None:
            return []
        if header.codec_id != coder.get("codec") or header.codec_sha256.hex() != coder.get("codec_sha256"):
            return [f"{self._where(index)}: coded with codec {header.codec_id!r}, not the profile's"]
        if (header.adapter_id or "") != (coder.get("adapter") or "") or (
            header.adapter_id and header.adapter_sha256.hex() != coder.get("adapter_sha256")
        ):
            return [f"{self._where(index)}: coded with adapter {header.adapter_id!r}, not the profile's"]
        return []


def _marker(group: zarr.Group) -> str | None:
    """The index sha256 a profile's completion marker names; None when it is not complete."""
    return group.attrs.get("index_sha256") if group.attrs.get("complete") else None


def _figures_of(tile: StoredTile) -> dict:
    return {
        "state": tile.state,
        "nbytes": tile.nbytes,
        "fidelity": tile.fidelity,
        "ttft_steps": tile.ttft_steps,
        "ttft_seconds": tile.ttft_seconds,
    }


def _same_figures(stored: dict, tile: StoredTile) -> bool:
    mine = _figures_of(tile)
    for name, (dtype, _) in _FIGURES.items():
        a, b = np.asarray(stored[name], dtype), np.asarray(mine[name], dtype)
        if not (a == b or (a.dtype.kind == "f" and np.isnan(a) and np.isnan(b))):
            return False
    return True


class _ProfileV1:
    """A profile of a version-1 archive: one array per figure, one chunk per tile each. Read as
    before (each bitstream's CRC32C); nothing binds a chunk to its place. Not written to."""

    version = 1

    def __init__(self, group: zarr.Group, label: str, url: str = ""):
        self.group = group
        self.label = label
        self.url = url

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.group["tiles"].shape

    @property
    def settings(self) -> dict:
        return self.group.attrs["settings"]

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    def key(self, index: tuple[int, int, int]) -> str:
        return bytes(self.group["keys"][_at(index)].reshape(-1)[0]).decode()

    def write_tile(self, index, record) -> bool:
        raise TTFTError(
            f"{self.url}: profile {self.label} is in the version-1 layout, which is read but not written: "
            f"ingest into a new archive"
        )

    write_empty = write_tile

    def mark_complete(self) -> None:
        if not self.complete:
            self.write_tile(None, None)

    def read_tile(self, index: tuple[int, int, int]) -> bytes | None:
        """The tile's bitstream, checked (CRC32C, version); None for an empty tile."""
        where = f"{self.url}: tile {self.label}{list(index)}"
        try:
            state = int(self._get("state", index))
            key = self.key(index)
            data = bytes(self._get("tiles", index)) if state == CODED else b""
        except StorageError:
            raise
        except Exception as exc:  # a chunk that zarr cannot decode: name the tile, not the codec stack
            raise TTFTError(f"{where}: stored chunk is unreadable ({type(exc).__name__}: {exc})") from None
        if not key or state == MISSING:
            raise TTFTError(f"{where} is missing from the archive")
        if state == EMPTY:
            return None
        try:
            bitstream.unpack(data)
        except BitstreamError as exc:
            raise TTFTError(f"{where}: {exc}") from None
        return data

    def nodata_mask(self, index: tuple[int, int, int]) -> bytes:
        return bytes(self._get("nodata_masks", index))

    def nodata_missing(self, index: tuple[int, int, int]) -> np.ndarray | None:
        data = self.read_tile(index)
        if data is None:
            return None
        h = bitstream.unpack(data).header
        packed = self.nodata_mask(index)
        shape = (h.channels, h.height, h.width)
        return _unpack_missing(packed, shape) if packed else np.zeros(shape, bool)

    def missing(self) -> list[tuple[int, int, int]]:
        keys = self.group["keys"][:]
        return [tuple(int(i) for i in idx) for idx in zip(*np.nonzero(_empty(keys)))]

    def figures(self) -> dict[str, np.ndarray]:
        return {name: self.group[name][:] for name in _FIGURES}

    def indices(self) -> Iterator[tuple[int, int, int]]:
        yield from np.ndindex(*self.shape)

    def check(self) -> list[str]:
        if not self.complete:
            return [f"{self.url}: profile {self.label}: incomplete ({len(self.missing())} tiles missing)"]
        problems = []
        for index in self.indices():
            try:
                self.read_tile(index)
            except TTFTError as exc:
                problems.append(str(exc))
        return problems

    def _get(self, array: str, index: tuple[int, int, int]):
        return self.group[array][_at(index)].reshape(-1)[0]


def _bytes_array(
    group: zarr.Group, name: str, shape: tuple, chunks: tuple, overwrite: bool = False, compressed: bool = True
) -> zarr.Array:
    """An array of byte strings. Zarr warns that this data type has no v3 specification yet: the
    archive names its format and version itself, and reads back what it wrote. Records of
    already compressed bytes are stored as they are (``compressed=False``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*VariableLengthBytes.*")
        options = {} if compressed else {"compressors": None}
        return group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=zarr.dtype.VariableLengthBytes(),
            fill_value=b"",
            overwrite=overwrite,
            **options,
        )


@contextlib.contextmanager
def _debris_ignored():
    """Listings pass over what a process killed while writing a local archive can leave: the
    temporary file (``*.partial``) of zarr's atomic write, which never replaced its target, or a
    folder made for a group whose metadata was never written. Zarr skips them, with a warning that
    would add a line to every listing; they hold nothing the archive needs (the next ingest writes
    the group), and a ``*.partial`` file may be deleted when no ingest runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Object at .* is not recognized as a component of a Zarr")
        yield


def _open_root(store, url: str, create: bool, attributes: dict) -> zarr.Group:
    for _ in range(3):
        try:
            if create:
                return zarr.open_group(store, mode="a", attributes=attributes)
            return zarr.open_group(store, mode="r")
        except zarr.errors.ContainsGroupError:
            continue  # another writer created the archive between zarr's check and its create
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            break
    raise TTFTError(f"{url}: no archive there, or it cannot be opened")


def _require_group(parent: zarr.Group, name: str) -> zarr.Group:
    """require_group that tolerates another writer creating the same group at the same moment."""
    try:
        return parent.require_group(name)
    except zarr.errors.ContainsGroupError:
        return parent[name]


def _attrs_checksum(label: str, attrs: dict) -> int:
    """CRC32C of attributes in canonical JSON, bound to the item or profile they describe."""
    return google_crc32c.value(json.dumps([label, attrs], sort_keys=True, separators=(",", ":")).encode())


def _headers_crc(headers: list[bytes]) -> int:
    return google_crc32c.value(b"".join(struct.pack("<I", len(h)) + h for h in headers))


def _key(key: str) -> bytes:
    """A tile key: a sha256 in lowercase hex (what ingest makes) as its 32 bytes, else as text."""
    if len(key) == 64 and all(c in "0123456789abcdef" for c in key):
        return b"\x01" + bytes.fromhex(key)
    return b"\x00" + _str(key)


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    if len(raw) >= 2**16:
        raise TTFTError(f"identifier of {len(raw)} bytes is too long for a tile record")
    return struct.pack("<H", len(raw)) + raw


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TTFTError(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple:
        return fmt.unpack(self.take(fmt.size))

    def string(self) -> str:
        (n,) = self.unpack(struct.Struct("<H"))
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise TTFTError(f"{self.what} holds an identifier that is not UTF-8") from None

    def key(self) -> str:
        kind = self.take(1)[0]
        if kind == 1:
            return self.take(32).hex()
        if kind == 0:
            return self.string()
        raise TTFTError(f"{self.what} holds a key of unknown kind {kind}")


def _at(index: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    return tuple(slice(int(i), int(i) + 1) for i in index)


def _empty(keys: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda k: len(k) == 0, otypes=[bool])(keys)


def _ledger_name(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def _usable(name: str) -> bool:
    return bool(name) and "/" not in name and not name.startswith(".") and name.strip() == name


def _check_name(name: str, what: str) -> None:
    if not _usable(name):
        raise TTFTError(f"{what} {name!r} is not usable as an archive name (no '/', no leading '.')")
