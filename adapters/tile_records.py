"""The archive's byte formats, each self-describing and under one CRC32C (docs/formats.md):

- the tile record: one tile with its item, profile, position, key, state, figures, nodata mask
  and bitstream; what an ingest writes, one per chunk, while a profile is being coded;
- the shard: the tiles of a block of the grid (up to SHARD_SIDE x SHARD_SIDE tiles, and slices
  while that leaves room), bound once to their item, profile and place, a CRC32C on its header
  and on each tile's entry; what a complete profile keeps, written whole by the one process
  that completes it;
- the index: a complete profile's figures, keys and tile checksums, read in one request;
- the nodata mask, as GDAL sees masks.

Knows bytes; no Zarr, no files."""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import google_crc32c
import numpy as np

from ttft_archive.ttft_core.errors import TTFTError

MISSING, CODED, EMPTY = 0, 1, 2

RECORD_MAGIC, INDEX_MAGIC = b"TTFR", b"TTFI"
RECORD_VERSION = INDEX_VERSION = 2
MASK_NONE, MASK_DATASET, MASK_PER_BAND = 0, 1, 2  # GDAL: all valid, one mask for all bands, per band

FIGURES = {  # name: (dtype, fill value)
    "state": ("uint8", MISSING),
    "nbytes": ("int64", 0),
    "fidelity": ("float64", math.nan),
    "ttft_steps": ("int32", 0),
    "ttft_seconds": ("float32", 0.0),
}
_RECORD_FIXED = struct.Struct("<4sB3IBdif")  # magic, version, slice/row/col, state, fidelity, steps, seconds

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
    _check_content("tile record", state, mask_kind, mask, tile_data)
    return StoredTile(
        item, profile, (s, row, col), key, state, tile_data, fidelity, steps, seconds, mask_kind, mask, crc
    )


def _check_content(what: str, state: int, mask_kind: int, mask: bytes, data: bytes) -> None:
    if state not in (CODED, EMPTY):
        raise TTFTError(f"{what} holds an unknown state {state}")
    if mask_kind not in (MASK_NONE, MASK_DATASET, MASK_PER_BAND) or (mask_kind == MASK_NONE) != (not mask):
        raise TTFTError(f"{what} holds an unknown nodata mask kind {mask_kind}")
    if state == EMPTY and (data or mask):
        raise TTFTError(f"{what} of an empty tile holds data")
    if state == CODED and not data:
        raise TTFTError(f"{what} of a coded tile holds no bitstream")


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


def pack_missing(missing: np.ndarray) -> bytes:
    """The version-1 form of a mask (per band, packed and deflated; b"": all valid), which
    ``adapters.raster.unpack_missing`` reads."""
    if not missing.any():
        return b""
    return zlib.compress(np.packbits(missing).tobytes(), 6)


def unpack_missing(packed: bytes, shape: tuple[int, ...]) -> np.ndarray:
    bits = np.frombuffer(zlib.decompress(packed), np.uint8)
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


# ---- the consolidated index: a complete profile's figures, keys and record checksums ----


def pack_index(item: str, profile: str, shape: tuple[int, int, int], figures: dict, keys: list[str], crcs) -> bytes:
    body = _str(item) + _str(profile) + struct.pack("<3I", *shape)
    for name, (dtype, _) in FIGURES.items():
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
    for name, (dtype, _) in FIGURES.items():
        dt = np.dtype(dtype).newbyteorder("<")
        figures[name] = np.frombuffer(r.take(n * dt.itemsize), dt).astype(dtype).reshape(shape)
    crcs = np.frombuffer(r.take(4 * n), "<u4").astype(np.uint32).reshape(shape)
    keys = [r.string() for _ in range(n)]
    if r.pos != len(body):
        raise TTFTError("profile index has unexpected trailing bytes")
    return item, profile, tuple(shape), figures, keys, crcs


def figures_of(tile: StoredTile) -> dict:
    return {
        "state": tile.state,
        "nbytes": tile.nbytes,
        "fidelity": tile.fidelity,
        "ttft_steps": tile.ttft_steps,
        "ttft_seconds": tile.ttft_seconds,
    }


def same_figures(stored: dict, tile: StoredTile) -> bool:
    mine = figures_of(tile)
    for name, (dtype, _) in FIGURES.items():
        a, b = np.asarray(stored[name], dtype), np.asarray(mine[name], dtype)
        if not (a == b or (a.dtype.kind == "f" and np.isnan(a) and np.isnan(b))):
            return False
    return True


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


# ---- the shard: the tiles of one block of the grid, in one object ----

SHARD_MAGIC, SHARD_VERSION = b"TTFS", 1
SHARD_SIDE = 8  # tiles per shard along rows and columns: 64 tiles of 256 px cover 2048 x 2048 px
_SHARD_FIXED = struct.Struct("<4sB6I")  # magic, version, first tile (slice, row, col), extent (same)
_ENTRY_FIXED = struct.Struct("<BdifBII")  # state, fidelity, steps, seconds, mask kind, mask and data bytes


def shard_shape(grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """Tiles per shard along (slices, rows, columns): SHARD_SIDE rows and columns at most, and
    as many slices (band groups, series slices) as keep it within SHARD_SIDE^2 tiles. Few
    objects for small tiles (a file's last disk block and every S3 request cost), while a
    query of one tile reads one shard of bounded size."""
    rows, cols = min(grid[1], SHARD_SIDE), min(grid[2], SHARD_SIDE)
    return (max(1, min(grid[0], SHARD_SIDE * SHARD_SIDE // (rows * cols))), rows, cols)


def tile_entry(tile: StoredTile) -> bytes:
    """A tile as a shard holds it: figures, key, mask and bitstream (its place and profile are the
    shard's), then the CRC32C of those bytes, which a complete profile's index holds too."""
    body = _ENTRY_FIXED.pack(
        tile.state, tile.fidelity, tile.ttft_steps, tile.ttft_seconds, tile.mask_kind, len(tile.mask), len(tile.data)
    )
    body += _key(tile.key) + tile.mask + tile.data
    return body + struct.pack("<I", google_crc32c.value(body))


def entry_crc(tile: StoredTile) -> int:
    return struct.unpack("<I", tile_entry(tile)[-4:])[0]


def pack_shard(item: str, profile: str, first: tuple, extent: tuple, tiles: list[StoredTile]) -> bytes:
    """The shard of the ``extent`` tiles from ``first``; ``tiles`` in C order over that block. Its
    header (place, item, profile, where each tile's entry starts) and every entry carry their own
    CRC32C: damage to one entry costs that tile only."""
    if len(tiles) != math.prod(extent):
        raise TTFTError(f"a shard of extent {list(extent)} takes {math.prod(extent)} tiles, not {len(tiles)}")
    entries = [tile_entry(t) for t in tiles]
    ends = np.cumsum([0] + [len(e) for e in entries]).astype("<u4")
    header = _SHARD_FIXED.pack(SHARD_MAGIC, SHARD_VERSION, *first, *extent) + _str(item) + _str(profile)
    header += ends.tobytes()
    return header + struct.pack("<I", google_crc32c.value(header)) + b"".join(entries)


def shard_header_size(item: str, profile: str, count: int) -> int:
    """The bytes of a shard's header (CRC32C included) for ``count`` tiles: what a reader fetches
    first to find one tile's entry without the others."""
    return _SHARD_FIXED.size + 4 + len(item.encode()) + len(profile.encode()) + 4 * (count + 1) + 4


def unpack_shard_header(data: bytes) -> tuple[str, str, tuple, tuple, np.ndarray, int]:
    """(item, profile, first tile, extent, entry ends, header size) of a shard's header (``data``
    may go on past it); any defect raises TTFTError."""
    data = bytes(data)
    if len(data) < _SHARD_FIXED.size + 8 or data[:4] != SHARD_MAGIC:
        raise TTFTError(f"not a tile shard ({len(data)} bytes, magic {data[:4]!r})")
    if data[4] != SHARD_VERSION:
        raise TTFTError(f"tile shard version {data[4]} is not supported (this reader knows {SHARD_VERSION})")
    r = _Reader(data, "tile shard header")
    fixed = r.unpack(_SHARD_FIXED)
    first, extent = tuple(fixed[2:5]), tuple(fixed[5:8])
    item, profile = r.string(), r.string()
    count = math.prod(extent)
    if count == 0 or 4 * (count + 1) > len(data):
        raise TTFTError(f"tile shard header declares {count} tiles in {len(data)} bytes")
    ends = np.frombuffer(r.take(4 * (count + 1)), "<u4").astype(np.int64)
    header_end = r.pos
    (crc,) = r.unpack(struct.Struct("<I"))
    if google_crc32c.value(data[:header_end]) != crc:
        raise TTFTError("tile shard header checksum (CRC32C) mismatch: the object is corrupt")
    if ends[0] != 0 or (np.diff(ends) < 4).any():
        raise TTFTError("tile shard header places its entries out of order")
    return item, profile, first, extent, ends, r.pos


def unpack_shard(data: bytes) -> tuple[str, str, tuple, tuple, list[StoredTile | TTFTError]]:
    """(item, profile, first tile, extent, tiles in C order) of a shard, each tile with the shard's
    item, profile and its own place, or the TTFTError of its damaged entry. A damaged header raises
    TTFTError (never another exception)."""
    data = bytes(data)
    item, profile, first, extent, ends, base = unpack_shard_header(data)
    if base + ends[-1] != len(data):
        raise TTFTError(f"tile shard of {len(data)} bytes does not hold the entries its header places")
    tiles = []
    for n, offset in enumerate(np.ndindex(*extent)):
        index = tuple(int(a + b) for a, b in zip(first, offset))
        try:
            tiles.append(unpack_entry(data[base + ends[n] : base + ends[n + 1]], item, profile, index))
        except TTFTError as exc:
            tiles.append(exc)
    return item, profile, first, extent, tiles


def unpack_entry(entry: bytes, item: str, profile: str, index: tuple) -> StoredTile:
    """One tile's entry of a shard, checked (CRC32C, lengths, state); TTFTError on any defect."""
    if len(entry) < 4:
        raise TTFTError(f"tile shard entry of {len(entry)} bytes is truncated")
    body, (crc,) = entry[:-4], struct.unpack("<I", entry[-4:])
    if google_crc32c.value(body) != crc:
        raise TTFTError("tile shard entry checksum (CRC32C) mismatch: the entry is corrupt")
    r = _Reader(body, "tile shard entry")
    state, fidelity, steps, seconds, mask_kind, mask_len, data_len = r.unpack(_ENTRY_FIXED)
    key = r.key()
    mask, tile_data = r.take(mask_len), r.take(data_len)
    if r.pos != len(body):
        raise TTFTError(f"tile shard entry has {len(body) - r.pos} unexpected trailing bytes")
    _check_content("tile shard entry", state, mask_kind, mask, tile_data)
    return StoredTile(item, profile, index, key, state, tile_data, fidelity, steps, seconds, mask_kind, mask, crc)
