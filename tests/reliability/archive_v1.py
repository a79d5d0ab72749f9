"""A frozen copy of the version-1 archive writer (adapters/archive.py as it was before version 2),
kept so that the tests can write version-1 archives and read them with the current code.

The Zarr archive (zarr-python 3, format v3), in a local folder or under an s3:// prefix.

Layout (also in docs/formats.md):

    <root>/                       attrs: format "ttft-archive", version
      items/<item id>/            attrs: source metadata, tile grid
        profiles/<profile>/       attrs: settings, complete (written last, true once every tile is in)
          tiles        (slices, rows, cols) variable-length bytes: the tile bitstreams
          nodata_masks (slices, rows, cols) variable-length bytes: where a coded tile held nodata
          keys         (slices, rows, cols) variable-length bytes: content hash of what made the tile
          state        (slices, rows, cols) uint8: 0 missing, 1 coded, 2 empty (nodata, not coded)
          nbytes       (slices, rows, cols) int64: len of the bitstream, the rate every report uses
          fidelity     (slices, rows, cols) float64: the task metric at encode time (NaN: none)
          ttft_steps   (slices, rows, cols) int32
          ttft_seconds (slices, rows, cols) float32

Every tile is its own chunk, so writers of different tiles never share a chunk. A tile is written
bitstream first and key last; a tile without its key counts as missing, and a profile is complete
only once its ``complete`` attribute is set, after all tiles. Knows Zarr and bytes; no Prefect.
"""

from __future__ import annotations

import hashlib
import math
import uuid
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

from ttft_archive.ttft_core import bitstream
from ttft_archive.ttft_core.errors import BitstreamError, TTFTError

FORMAT = "ttft-archive"
VERSION = 1
MISSING, CODED, EMPTY = 0, 1, 2


_BYTES_ARRAYS = ("tiles", "keys", "nodata_masks")
_FIGURES = {  # name: (dtype, fill value)
    "state": ("uint8", MISSING),
    "nbytes": ("int64", 0),
    "fidelity": ("float64", math.nan),
    "ttft_steps": ("int32", 0),
    "ttft_seconds": ("float32", 0.0),
}


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


def open_store(url: str, storage_options: dict | None = None, read_only: bool = False):
    if "://" in url and not url.startswith("file://"):
        # other processes add items and tiles: a cached directory listing would hide them
        options = {"use_listings_cache": False, **(storage_options or {})}
        return FsspecStore.from_url(url, storage_options=options, read_only=read_only)
    return LocalStore(url.removeprefix("file://"), read_only=read_only)


class Archive:
    def __init__(self, url: str, storage_options: dict | None = None, create: bool = True):
        """``create=False`` opens an existing archive read-only (queries, listings, checks)."""
        self.url = url
        store = open_store(url, storage_options, read_only=not create)
        self.root = _open_root(store, url, create)
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
    def item_ids(self) -> list[str]:
        return sorted(self.root["items"].group_keys()) if "items" in self.root else []

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
        if slice_headers is not None:
            headers = _bytes_array(group, "headers", (grid.slices,), (grid.slices,), overwrite=True)
            headers[:] = np.array([h.encode() for h in slice_headers], dtype=object)
        # attributes last: an item whose attributes are missing was not finished and is recreated
        group.attrs.update({"source": source, "grid": grid.to_dict()})

    def item(self, item_id: str) -> dict:
        if item_id not in self.item_ids():
            raise TTFTError(f"{self.url}: no item {item_id!r}")
        return dict(self.root["items"][item_id].attrs)

    def slice_headers(self, item_id: str, indices: list[int]) -> dict[int, str]:
        self.item(item_id)
        headers = self.root["items"][item_id]["headers"]
        return {i: bytes(headers[i : i + 1][0]).decode() for i in indices}

    def grid(self, item_id: str) -> TileGrid:
        return TileGrid(**self.item(item_id)["grid"])

    # ---- profiles ----
    def profile_names(self, item_id: str) -> list[str]:
        self.item(item_id)
        group = self.root["items"][item_id]
        return sorted(group["profiles"].group_keys()) if "profiles" in group else []

    def profile(self, item_id: str, name: str, settings: dict | None = None) -> "Profile":
        """Open a profile; with ``settings``, create it (or check the existing one has them)."""
        grid = self.grid(item_id)
        _check_name(name, "profile name")
        profiles = _require_group(self.root["items"][item_id], "profiles")
        if name in profiles:
            group = profiles[name]
            if settings is not None and group.attrs.get("settings") != settings:
                raise TTFTError(f"{self.url}: profile {item_id}/{name} exists with other settings")
            return Profile(group, f"{item_id}/{name}")
        if settings is None:
            raise TTFTError(f"{self.url}: item {item_id!r} has no profile {name!r}")
        group = profiles.create_group(name)
        chunks = (1, 1, 1)
        for array in _BYTES_ARRAYS:
            _bytes_array(group, array, grid.shape, chunks)
        for array, (dtype, fill) in _FIGURES.items():
            group.create_array(array, shape=grid.shape, chunks=chunks, dtype=dtype, fill_value=fill)
        group.attrs.update({"settings": settings, "complete": False})
        return Profile(group, f"{item_id}/{name}")


def _bytes_array(group: zarr.Group, name: str, shape: tuple, chunks: tuple, overwrite: bool = False) -> zarr.Array:
    """An array of byte strings. Zarr warns that this data type has no v3 specification yet: the
    archive names its format and version itself, and reads back what it wrote."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*VariableLengthBytes.*")
        return group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=zarr.dtype.VariableLengthBytes(),
            fill_value=b"",
            overwrite=overwrite,
        )


class Profile:
    def __init__(self, group: zarr.Group, label: str):
        self.group = group
        self.label = label

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

    def write_tile(self, index: tuple[int, int, int], record: TileRecord) -> bool:
        """Store one coded tile. Returns False, writing nothing, when the same key is already there."""
        if self.key(index) == record.key:
            return False
        self._set("keys", index, b"")  # a rewrite counts as missing until its key is back
        self._set("tiles", index, record.data)
        self._set("nodata_masks", index, record.nodata_mask)
        for name, value in (
            ("state", CODED),
            ("nbytes", len(record.data)),
            ("fidelity", record.fidelity),
            ("ttft_steps", record.ttft_steps),
            ("ttft_seconds", record.ttft_seconds),
        ):
            self._set(name, index, value)
        self._set("keys", index, record.key.encode())
        return True

    def write_empty(self, index: tuple[int, int, int], key: str) -> bool:
        """Record a tile that holds no data (all nodata, air): nothing is coded for it."""
        if self.key(index) == key:
            return False
        self._set("keys", index, b"")
        self._set("tiles", index, b"")
        self._set("state", index, EMPTY)
        self._set("nbytes", index, 0)
        self._set("keys", index, key.encode())
        return True

    def read_tile(self, index: tuple[int, int, int]) -> bytes | None:
        """The tile's bitstream, checked (CRC32C, version); None for an empty tile."""
        where = f"tile {self.label}{list(index)}"
        try:
            state = int(self._get("state", index))
            key = self.key(index)
            data = bytes(self._get("tiles", index)) if state == CODED else b""
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

    def missing(self) -> list[tuple[int, int, int]]:
        keys = self.group["keys"][:]
        return [tuple(int(i) for i in idx) for idx in zip(*np.nonzero(_empty(keys)))]

    def refresh(self) -> "Profile":  # what the current flows call on a profile each batch
        return self

    def mark_complete(self) -> None:
        missing = self.missing()
        if missing:
            raise TTFTError(f"profile {self.label} still misses {len(missing)} tiles, first {list(missing[0])}")
        self.group.attrs["complete"] = True

    def figures(self) -> dict[str, np.ndarray]:
        return {name: self.group[name][:] for name in _FIGURES}

    def indices(self) -> Iterator[tuple[int, int, int]]:
        yield from np.ndindex(*self.shape)

    def _set(self, array: str, index: tuple[int, int, int], value) -> None:
        dtype = object if array in _BYTES_ARRAYS else self.group[array].dtype
        self.group[array][_at(index)] = np.array(value, dtype=dtype).reshape(1, 1, 1)

    def _get(self, array: str, index: tuple[int, int, int]):
        return self.group[array][_at(index)].reshape(-1)[0]


def _open_root(store, url: str, create: bool) -> zarr.Group:
    for _ in range(3):
        try:
            return zarr.open_group(store, mode="a" if create else "r")
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


def _at(index: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    return tuple(slice(i, i + 1) for i in index)


def _empty(keys: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda k: len(k) == 0, otypes=[bool])(keys)


def _ledger_name(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def _check_name(name: str, what: str) -> None:
    if not name or "/" in name or name.startswith(".") or name.strip() != name:
        raise TTFTError(f"{what} {name!r} is not usable as an archive name (no '/', no leading '.')")
