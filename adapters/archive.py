"""The Zarr archive (zarr-python 3, format v3), in a local folder or under an s3:// prefix.

Layout, version 3 (also in docs/formats.md):

    <root>/                       attrs: format "ttft-archive", version, uid
      items/<item id>/            attrs: source metadata, tile grid, checksum
        headers    (slices,)      variable-length bytes (DICOM items only)
        profiles/<profile>/       attrs: layout 3, settings, shard shape, checksum; once complete,
                                  complete and the index (written together, last)
          tiles    (slices, rows, cols) variable-length bytes: one tile record per chunk, while
                                  the profile is being coded (removed once it is complete)
          shards   (the grid in shards) variable-length bytes: one tile shard per chunk

While a profile is coded, every tile is its own chunk holding a tile record (its item, profile,
position, key, state, figures, nodata mask and bitstream under one CRC32C), written in one
request: writers of different tiles never share a chunk, and a tile is either all there or (a
torn or foreign chunk) refused and coded again. The process that completes the profile packs
the records into shards (a block of up to 8 x 8 tiles each, bound once to item, profile and
place, under one CRC32C), writes each whole, then the index and the completion marker in one
request, and removes the tile chunks: a complete profile costs a few objects, not one per tile
(a file's last disk block, an S3 request). A tile record present beside a shard is the newer.

Version-2 profiles (tile records and an ``index`` array, no shards) are read as before and made
version 3 when they are next completed; version-1 archives (one array per figure, see
``_ProfileV1``) are read as before and not written to. Knows Zarr and bytes; no Prefect.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import math
import struct
import uuid
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import google_crc32c
import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ttft_archive.adapters import tile_records as tr
from ttft_archive.adapters.archive_store import KILL_AFTER_WRITES, StorageError, open_store
from ttft_archive.adapters.tile_records import CODED, EMPTY, FIGURES, MISSING, StoredTile, shard_shape
from ttft_archive.ttft_core import bitstream
from ttft_archive.ttft_core.errors import BitstreamError, TTFTError

__all__ = ["KILL_AFTER_WRITES", "StorageError", "Archive", "Profile", "TileGrid", "TileRecord", "CODED", "EMPTY"]

FORMAT = "ttft-archive"
VERSION = 3
_COMPLETION_ROUNDS = 5  # shards, index and marker, a read back: again while other writers change tiles
_SHARDS_CACHED = 64  # shards a profile keeps read: a query walks tiles row by row across them


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


# ---- the archive ----


class Archive:
    def __init__(self, url: str, storage_options: dict | None = None, create: bool = True):
        """``create=False`` opens an existing archive read-only (queries, listings, checks); such
        an instance reads each item's attributes once (on S3, one request each)."""
        self.url = url
        self._read_items: dict[str, dict] | None = None if create else {}
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
        if self.has_item(item_id):
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

    def has_item(self, item_id: str) -> bool:
        """Whether the item exists and its creation finished (its attributes were written)."""
        group = self.root.get(f"items/{item_id}") if _usable(item_id) else None
        return isinstance(group, zarr.Group) and "grid" in group.attrs

    def item(self, item_id: str) -> dict:
        if self._read_items is None:
            return self._checked_item(item_id)
        if item_id not in self._read_items:
            self._read_items[item_id] = self._checked_item(item_id)
        return copy.deepcopy(self._read_items[item_id])

    def _checked_item(self, item_id: str) -> dict:
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
        profile = Profile(group, item_id, name, grid.shape, self.url)
        profile.check_attrs()
        if settings is not None and profile.settings != settings:
            raise TTFTError(f"{self.url}: profile {label} exists with other settings")
        if settings is not None:  # opened to be written: it is completed in this version's layout
            self._raise_version()
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
        for stale in present - {"tiles"}:  # old shards or index, arrays of an interrupted version-1 creation
            del group[stale]
        self._raise_version()
        attrs = {"layout": VERSION, "settings": settings, "shard": list(shard_shape(grid.shape))}
        group.attrs.update(attrs | {"checksum": _attrs_checksum(f"{item_id}/{name}", attrs), "complete": False})
        return Profile(group, item_id, name, grid.shape, self.url)

    def _raise_version(self) -> None:
        """An older archive that now holds a profile of this version's layout says so: an older
        reader refuses it in one line instead of misreading it."""
        if self.version < VERSION:
            self.root.attrs["version"] = VERSION

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
    """A profile of layout 2 or 3: tile records while it is coded, shards (layout 3) or tile
    records and an index array (layout 2, read) once complete."""

    def __init__(self, group: zarr.Group, item: str, name: str, shape: tuple[int, int, int], url: str = ""):
        self.group = group
        self.item, self.name, self.url = item, name, url
        self.label = f"{item}/{name}"
        self.shape = tuple(int(n) for n in shape)
        self._index: tuple | None = None  # (figures, keys, crcs) of the index, once read
        self._last: StoredTile | None = None  # the last record read: query reads tile then mask
        self._tiles: zarr.Array | None = None
        self._shards: dict = {}  # shard position -> {tile index: StoredTile}, or None for no shard
        self._entries: dict = {}  # tile index -> StoredTile (or its TTFTError), fetched alone by prefetch

    def refresh(self) -> "Profile":
        """Forget what was read (attributes, shards, whether tile records exist): another process
        may have completed the profile, or taken tiles into it, since."""
        self.group = self._reopened()
        self._index = self._last = self._tiles = None
        self._shards, self._entries = {}, {}
        return self

    @property
    def version(self) -> int:
        return int(self.group.attrs.get("layout", 2))

    @property
    def shard(self) -> tuple[int, int, int]:
        return tuple(self.group.attrs.get("shard") or tr.shard_shape(self.shape))

    @property
    def tiles(self) -> zarr.Array:
        """The tile-record array, made when a completed profile takes a tile again."""
        if not self._tiles:
            try:
                self._tiles = _bytes_array(self.group, "tiles", self.shape, (1, 1, 1), compressed=False)
            except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError):
                self._tiles = self.group["tiles"]
        return self._tiles

    def _tile_array(self) -> zarr.Array | None:
        """The tile-record array; None when there is none (looked up once: see ``refresh``)."""
        if self._tiles is None:
            self._tiles = self.group["tiles"] if "tiles" in self.group else False
        return self._tiles or None

    @property
    def settings(self) -> dict:
        return self.group.attrs["settings"]

    @property
    def complete(self) -> bool:
        attrs = self.group.attrs
        found = attrs.get("index") if self.version >= 3 else attrs.get("index_sha256")
        return bool(attrs.get("complete", False)) and found is not None

    def check_attrs(self) -> None:
        attrs = dict(self.group.attrs)
        stored = attrs.get("checksum")
        if stored is None or _attrs_checksum(self.label, _checked_attrs(attrs)) != stored:
            raise TTFTError(f"{self.url}: profile {self.label}: attributes do not match their checksum (edited?)")

    def _where(self, index) -> str:
        return f"{self.url}: tile {self.label}{[int(i) for i in index]}"

    # ---- reading ----
    def record(self, index: tuple[int, int, int]) -> StoredTile | None:
        """The tile's record, checked (CRC32C, bound to this item, profile, place); None when no
        record was written. A complete profile reads its shards; one being coded its tile records
        first (newer), then its shards. Raises TTFTError naming archive, profile and tile (shard)."""
        index = tuple(int(i) for i in index)
        tile = None
        if not (self.complete and self.version >= 3):
            tile = self._tile_record(index)
        if tile is None and self.version >= 3:
            tile = self._shard_tile(index)
        if tile is not None:
            self._last = tile
        return tile

    def _tile_record(self, index: tuple[int, int, int]) -> StoredTile | None:
        tiles = self._tile_array()
        if tiles is None:
            return None
        try:
            raw = bytes(tiles[_at(index)].reshape(-1)[0])
        except (OSError, StorageError):  # the storage failed, not the chunk: never count it as missing
            raise
        except Exception as exc:  # a chunk that zarr cannot decode: name the tile, not the codec stack
            raise TTFTError(f"{self._where(index)}: stored chunk is unreadable ({type(exc).__name__})") from None
        if not raw:
            return None
        try:
            tile = tr.unpack_record(raw)
        except TTFTError as exc:
            raise TTFTError(f"{self._where(index)}: {exc}") from None
        if (tile.item, tile.profile, tile.index) != (self.item, self.name, index):
            raise TTFTError(
                f"{self._where(index)}: the chunk holds the record of tile "
                f"{tile.item}/{tile.profile}{list(tile.index)} (chunks swapped or copied)"
            )
        return tile

    def _shard_tile(self, index: tuple[int, int, int]) -> StoredTile | None:
        if index in self._entries:  # fetched alone by prefetch
            tile = self._entries[index]
        else:
            tiles = self._shard(self._position(index))
            tile = tiles.get(index) if tiles else None
        if isinstance(tile, TTFTError):  # this tile's entry is damaged; its neighbours read
            raise TTFTError(f"{self._where(index)}: {tile}")
        return tile

    def _position(self, index: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(i // s for i, s in zip(index, self.shard))

    def _extent(self, position: tuple[int, int, int]) -> tuple[tuple, tuple]:
        """(first tile, extent) of the shard at ``position``."""
        first = tuple(p * s for p, s in zip(position, self.shard))
        return first, tuple(min(s, n - f) for s, n, f in zip(self.shard, self.shape, first))

    def prefetch(self, indices) -> None:
        """Read ahead the tiles a query will read: a shard whole where the query wants a quarter of
        its tiles or more (one request), else its header and those tiles' entries alone (byte
        ranges: a window of a few tiles does not fetch the shards around it, on S3 above all)."""
        if not (self.complete and self.version >= 3) or "shards" not in self.group:
            return
        array = self.group["shards"]
        ranged = [type(c).__name__ for c in array.metadata.codecs] == ["VLenBytesCodec"]
        wanted: dict = {}
        for index in indices:
            wanted.setdefault(self._position(tuple(int(i) for i in index)), []).append(tuple(int(i) for i in index))
        for position, tiles in wanted.items():
            if position in self._shards:
                continue
            first, extent = self._extent(position)
            if not ranged or 4 * len(tiles) >= math.prod(extent):
                self._shard(position)
            else:
                self._entries |= self._fetch_entries(array, position, tiles)

    def _fetch_entries(self, array: zarr.Array, position: tuple, indices: list) -> dict:
        """The entries of ``indices`` in the shard at ``position``, each by a byte range after one
        for the header (a chunk of the shard array: a u32 count and a u32 length, then the shard);
        a tile of a damaged entry maps to its TTFTError; no shard there: nothing."""
        first, extent = self._extent(position)
        key = f"{array.path}/{array.metadata.encode_chunk_key(position)}"
        size = tr.shard_header_size(self.item, self.name, math.prod(extent))
        head = self._read_range(key, 8, 8 + size)
        if head is None:
            return {}
        item, name, _, _, ends, base = self._bound_shard(position, tr.unpack_shard_header, head)
        found = {}
        for index in indices:
            n = int(np.ravel_multi_index(tuple(i - f for i, f in zip(index, first)), extent))
            start, end = 8 + base + int(ends[n]), 8 + base + int(ends[n + 1])
            raw = self._read_range(key, start, end) or b""
            try:
                if len(raw) != end - start:
                    raise TTFTError("tile shard is truncated before this tile's entry ends")
                found[index] = tr.unpack_entry(raw, item, name, index)
            except TTFTError as exc:
                found[index] = exc
        return found

    def _shard_where(self, position: tuple[int, int, int]) -> str:
        return f"{self.url}: shard {self.label}{list(position)} (tiles {list(self._extent(position)[0])} on)"

    def _bound_shard(self, position: tuple[int, int, int], unpack: Callable, data: bytes) -> tuple:
        """What ``unpack`` (``tr.unpack_shard`` or ``tr.unpack_shard_header``) reads of a shard,
        checked to belong to this profile and ``position``; TTFTError naming the shard."""
        try:
            found = unpack(data)
        except TTFTError as exc:
            raise TTFTError(f"{self._shard_where(position)}: {exc}") from None
        item, name, at, span = found[:4]
        if (item, name, at, span) != (self.item, self.name, *self._extent(position)):
            raise TTFTError(
                f"{self._shard_where(position)}: the chunk holds the shard of tiles {list(at)} on of {item}/{name} "
                "(swapped or copied)"
            )
        return found

    def _read_range(self, key: str, start: int, end: int) -> bytes | None:
        buffer = sync(self.group.store.get(key, default_buffer_prototype(), RangeByteRequest(start, end)))
        return None if buffer is None else buffer.to_bytes()

    def _shard(self, position: tuple[int, int, int]) -> dict | None:
        """The tiles of the shard at ``position`` (shard grid coordinates), checked and bound to
        this profile and place; None when there is none. Cached: a shard holds many tiles."""
        if position in self._shards:
            return self._shards[position]
        found = None
        if "shards" in self.group:
            first, extent = self._extent(position)
            try:
                raw = bytes(self.group["shards"][_at(position)].reshape(-1)[0])
            except (OSError, StorageError):
                raise
            except Exception as exc:
                where = self._shard_where(position)
                raise TTFTError(f"{where}: stored chunk is unreadable ({type(exc).__name__})") from None
            if raw:
                tiles = self._bound_shard(position, tr.unpack_shard, raw)[-1]
                found = dict(zip(_block_indices(first, extent), tiles))
        if len(self._shards) >= _SHARDS_CACHED:  # the one read first goes
            del self._shards[next(iter(self._shards))]
        self._shards[position] = found
        return found

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

    def keys(self) -> list[str]:
        """Every tile's key in grid order ("" as ``key`` gives it): from the index of a complete
        profile (one read), else from the records."""
        if self.complete:
            index = self._read_index(strict=False)
            if index is not None:
                return list(index[1])
        return [self.key(i) for i in self.indices()]

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
            return tr.decode_mask(tile.mask_kind, tile.mask, (header.channels, header.height, header.width))
        except TTFTError as exc:
            raise TTFTError(f"{self._where(index)}: {exc}") from None

    def nodata_mask(self, index: tuple[int, int, int]) -> bytes:
        """The mask in the form ``adapters.raster.unpack_missing`` reads (b"": all valid)."""
        missing = self.nodata_missing(index)
        return b"" if missing is None else tr.pack_missing(missing)

    def missing(self) -> list[tuple[int, int, int]]:
        """Tiles without a record that can be trusted (ingest again to code them)."""
        return [i for i in self.indices() if self._record_or_none(i) is None]

    def figures(self) -> dict[str, np.ndarray]:
        """Each tile's state, nbytes, fidelity, TTFT steps and seconds: from the index when the
        profile is complete (one read), else from every tile's record (a tile whose record cannot
        be trusted counts as missing)."""
        if self.complete:
            return {k: v.copy() for k, v in self._read_index(strict=True)[0].items()}
        figures = _blank_figures(self.shape)
        for tile in filter(None, map(self._record_or_none, self.indices())):
            _summarise(tile, figures)
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
        if self.version >= 3:
            try:
                raw = base64.b64decode(self.group.attrs.get("index") or "", validate=True)
            except ValueError:
                raise TTFTError(f"{where}: index attribute is not base64") from None
        else:
            raw = self._stored_index_array()
            if raw is None or hashlib.sha256(raw).hexdigest() != self.group.attrs.get("index_sha256"):
                raise TTFTError(f"{where}: index is not the one its completion marker names")
        try:
            item, name, shape, figures, keys, crcs = tr.unpack_index(raw)
        except TTFTError as exc:
            raise TTFTError(f"{where}: {exc}") from None
        if (item, name, shape) != (self.item, self.name, tuple(self.shape)):
            raise TTFTError(f"{where}: index belongs to {item}/{name} of shape {list(shape)}")
        return figures, keys, crcs

    def _stored_index_array(self) -> bytes | None:
        """A layout-2 profile's index, as stored in its own array."""
        try:
            return bytes(self.group["index"][:][0]) if "index" in self.group else None
        except StorageError:
            raise
        except Exception as exc:
            raise TTFTError(f"{self.url}: profile {self.label}: index unreadable ({type(exc).__name__})") from None

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
                missing = tr.unpack_missing(record.nodata_mask, shape)
            except (zlib.error, ValueError) as exc:
                raise TTFTError(f"{self._where(index)}: nodata mask does not fit the tile {shape} ({exc})") from None
            kind, mask = tr.encode_mask(missing)
        else:
            kind, mask = tr.MASK_NONE, b""
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
            self.group.attrs.update({"complete": False, "index": None, "index_sha256": None})
        self._index = self._last = None
        self.tiles[_at(tile.index)] = np.array(tr.pack_record(tile), dtype=object).reshape(1, 1, 1)

    def mark_complete(self) -> None:
        """Pack the tiles into shards, a block at a time, each written whole; then the index with
        the completion marker (one request); then remove the tile records. Nothing but that
        removal when the profile is complete and its index still holds what the tiles say.
        Another ingest of the same profile may store a tile while this one completes it (tuned
        twice, two records of a tile differ at least in their TTFT seconds): the tiles are read
        once more after the marker, and shards and index made again until they hold what is
        stored. One shard's tiles are in memory at a time."""
        for _ in range(_COMPLETION_ROUNDS):
            stored = self._reopened()
            if stored.attrs.get("layout") == VERSION and stored.attrs.get("complete"):
                index = self._pack_index(*self._summary())
                if stored.attrs.get("index") == index:
                    self.group, self._index = stored, None  # this object sees it complete
                    self._drop_tile_records()
                    return
            figures, keys, crcs = self._write_shards()
            attrs = {"layout": VERSION, "settings": self.settings, "shard": list(self.shard)}
            self.group.attrs.update(
                attrs
                | {"checksum": _attrs_checksum(self.label, attrs), "complete": True}
                | {"index": self._pack_index(figures, keys, crcs), "index_sha256": None}
            )
            self._index, self._shards, self._entries = None, {}, {}
            if np.array_equal(self._summary()[2], crcs):
                self._drop_tile_records()
                return
        raise TTFTError(
            f"{self.url}: profile {self.label} kept changing while it was completed (other ingests of it "
            f"running?): ingest it again once they end"
        )

    def _current(self, index: tuple[int, int, int]) -> StoredTile | None:
        """The tile as completion takes it: its record, else its shard (another writer's record is
        newer than the shards); None when it is missing or cannot be trusted."""
        try:
            return self._tile_record(index) or self._shard_tile(index)
        except StorageError:
            raise
        except TTFTError:
            return None

    def _blocks(self) -> Iterator[tuple[tuple, tuple, tuple]]:
        """(position, first tile, extent) of every shard of the grid."""
        for position in np.ndindex(*(math.ceil(n / s) for n, s in zip(self.shape, self.shard))):
            yield (position, *self._extent(position))

    def _summary(self) -> tuple[dict, list[str], np.ndarray]:
        """Every tile's figures, key and entry CRC32C, as completion takes the tiles (``_current``);
        TTFTError naming the tiles missing."""
        return self._read_blocks(None)

    def _write_shards(self) -> tuple[dict, list[str], np.ndarray]:
        """The summary of ``_summary``, each block's shard written whole on the way, in one
        request, from this one process."""
        grid = tuple(math.ceil(n / s) for n, s in zip(self.shape, self.shard))
        if "shards" in self.group and self.group["shards"].shape != grid:
            del self.group["shards"]
        if "shards" not in self.group:
            try:
                _bytes_array(self.group, "shards", grid, (1, 1, 1), compressed=False)
            except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError):
                pass  # another process completing the same profile made it first
        return self._read_blocks(self.group["shards"])

    def _read_blocks(self, shards: zarr.Array | None) -> tuple[dict, list[str], np.ndarray]:
        """Read the tiles block by block (one shard in memory at a time), summarise them, and with
        ``shards``, write each block's shard there; a block with a missing tile is not written,
        and TTFTError names the missing tiles once every block has been read."""
        self._tiles = None  # another writer may have made the tile-record array since
        figures, crcs = _blank_figures(self.shape), np.zeros(self.shape, np.uint32)
        keys, missing = {}, []
        for position, first, extent in self._blocks():
            indices = _block_indices(first, extent)
            block = [self._current(index) for index in indices]
            self._shards.pop(position, None)
            missing += [index for index, tile in zip(indices, block) if tile is None]
            for tile in filter(None, block):
                _summarise(tile, figures, crcs)
                keys[tile.index] = tile.key
            if shards is not None and None not in block:
                blob = tr.pack_shard(self.item, self.name, first, extent, block)
                shards[_at(position)] = np.array(blob, dtype=object).reshape(1, 1, 1)
        self._check_none_missing(sorted(missing))
        return figures, [keys[index] for index in self.indices()], crcs

    def _check_none_missing(self, missing: list) -> None:
        if missing:
            raise TTFTError(
                f"{self.url}: profile {self.label} still misses {len(missing)} tiles, first {list(missing[0])} "
                f"(ingest it again)"
            )

    def _pack_index(self, figures: dict, keys: list[str], crcs: np.ndarray) -> str:
        blob = tr.pack_index(self.item, self.name, self.shape, figures, keys, crcs)
        return base64.b64encode(blob).decode("ascii")

    def _drop_tile_records(self) -> None:
        """Remove the tile records the shards now hold, and a layout-2 index array; whatever a
        crash left of them is removed by the next completion (and a record is never older than
        the shard it is beside)."""
        self._tiles = None
        store = self.group.store
        for name in ("tiles", "index"):
            sync(store.delete_dir(f"{self.group.path}/{name}"))

    def _reopened(self) -> zarr.Group:
        """The profile's group as stored now: this object's attributes may be older (another
        process may have completed the profile since it was opened)."""
        return zarr.open_group(self.group.store, path=self.group.path, mode="r+")

    # ---- checking ----
    def check(self) -> list[str]:
        """Every tile's record and bitstream (checksums, binding to this profile and its settings'
        codec and adapter), and the index against the tiles: one line per problem (one per
        damaged shard)."""
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
                if str(exc) not in problems:
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
                stored = {name: figures[name][index] for name in FIGURES}
                crc = tr.entry_crc(tile) if self.version >= 3 else tile.crc
                if keys[flat] != tile.key or int(crcs[index]) != crc or not tr.same_figures(stored, tile):
                    problems.append(f"{self._where(index)}: the profile index does not match the tile's record")
        return problems

    def _check_coded(self, index, tile: StoredTile, coders: dict) -> list[str]:
        try:
            header = bitstream.unpack(tile.data).header
            tr.decode_mask(tile.mask_kind, tile.mask, (header.channels, header.height, header.width))
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


def _block_indices(first: tuple, extent: tuple) -> list[tuple[int, int, int]]:
    """The tiles of a shard's block, in C order (the order of its entries)."""
    return [tuple(int(f + o) for f, o in zip(first, off)) for off in np.ndindex(*extent)]


def _blank_figures(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Each figure over the grid, at its value for a missing tile."""
    return {name: np.full(shape, fill, dtype) for name, (dtype, fill) in FIGURES.items()}


def _summarise(tile: StoredTile, figures: dict, crcs: np.ndarray | None = None) -> None:
    """Enter a tile's figures (and with ``crcs``, its entry's CRC32C) at its place."""
    for name, value in tr.figures_of(tile).items():
        figures[name][tile.index] = value
    if crcs is not None:
        crcs[tile.index] = tr.entry_crc(tile)


def _checked_attrs(attrs: dict) -> dict:
    """The profile attributes its checksum covers: the shard shape too from layout 3 on."""
    names = ("layout", "settings", "shard") if attrs.get("layout", 2) >= 3 else ("layout", "settings")
    return {k: attrs.get(k) for k in names}


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

    def prefetch(self, indices) -> None:
        """Nothing to read ahead: a tile is read from its own chunks."""

    def refresh(self) -> "_ProfileV1":
        return self  # nothing cached

    def keys(self) -> list[str]:
        return [self.key(i) for i in self.indices()]

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
        return tr.unpack_missing(packed, shape) if packed else np.zeros(shape, bool)

    def missing(self) -> list[tuple[int, int, int]]:
        keys = self.group["keys"][:]
        return [tuple(int(i) for i in idx) for idx in zip(*np.nonzero(_empty(keys)))]

    def figures(self) -> dict[str, np.ndarray]:
        return {name: self.group[name][:] for name in FIGURES}

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
