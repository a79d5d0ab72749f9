"""Pixels the codec cannot carry, kept exactly beside the tiles: one record per slice of an item.

A learned codec sees values in [0, 1]; a DICOM slice may hold stored values outside the range its
mapping covers (CT below -1024 HU outside the reconstruction field, metal above 3071 HU) and a
padding region (PixelPaddingValue). Those pixels are an exception set: the codec codes the slice as
its mapping clips it (so the tiles and their figures do not change), and a query puts the exact
stored values back over the decoded ones.

A slice's record (``encode``/``decode``; b"" when the slice has no exception), integers
little-endian:

    version u8 (1), flags u8 (bit 0: a padding mask is there), rows u16, cols u16,
    padding value i32, then zlib of: the padding mask when flag 0 is set, the other mask, the
    other pixels' stored values as i32 in raster order; CRC32 of all of the above u32.

The padding mask marks the pixels equal to the padding value (a mask, no values); the other mask
marks every other exception, whose values follow. A mask is coded as its runs in raster order
(the first one of unmarked pixels, maybe empty), each run less the run two before it (the same
edge a row earlier: small numbers for a region's outline), zigzag and LEB128 varints, after a
varint count of runs. The padding outside a CT reconstruction field (a disc's complement) then
takes a record of 199 bytes, where its packed bit mask takes 32 KB, 1.1 KB deflated. The records
of an item are the item-level array ``pixel_exceptions`` (``write``/``read``), next to the
archive's ``headers`` array: one chunk of variable-length bytes, attrs naming the format.
Knows Zarr and bytes; no Prefect.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import zarr

from ttft_archive.ttft_core.errors import TTFTError

ARRAY = "pixel_exceptions"
FORMAT = "ttft-pixel-exceptions"
VERSION = 1
_HEAD = struct.Struct("<BBHHi")


@dataclass(frozen=True)
class Exceptions:
    """One slice's exception set: where the padding value stands, and other pixels with values."""

    shape: tuple[int, int]
    padding_value: int | None
    padding: np.ndarray  # bool (rows, cols)
    other: np.ndarray  # bool (rows, cols), disjoint from padding
    values: np.ndarray  # int64 (other.sum(),), raster order

    @property
    def count(self) -> int:
        return int(self.padding.sum() + self.other.sum())


def find(
    stored: np.ndarray, outside: np.ndarray, padding_value: int | None, padding_limit: int | None = None
) -> Exceptions:
    """The exception set of a slice of stored values: ``outside`` (bool) marks what the codec's mapping
    cannot carry; a padding value, or the range from it to ``padding_limit``, is an exception too."""
    stored = np.asarray(stored)
    padding = np.zeros(stored.shape, bool) if padding_value is None else stored == padding_value
    other = outside.copy()
    if padding_value is not None and padding_limit is not None:
        lo, hi = sorted((padding_value, padding_limit))
        other |= (stored >= lo) & (stored <= hi)
    other &= ~padding
    return Exceptions(stored.shape, padding_value, padding, other, stored[other].astype(np.int64))


def encode(exc: Exceptions) -> bytes:
    if not exc.count:
        return b""
    rows, cols = exc.shape
    has_padding = exc.padding_value is not None and bool(exc.padding.any())
    body = [_mask_bytes(exc.padding)] if has_padding else []
    body += [_mask_bytes(exc.other), exc.values.astype("<i4").tobytes()]
    head = _HEAD.pack(VERSION, int(has_padding), rows, cols, int(exc.padding_value) if has_padding else 0)
    data = head + zlib.compress(b"".join(body), 9)
    return data + struct.pack("<I", zlib.crc32(data))


def decode(data: bytes, shape: tuple[int, int], where: str) -> Exceptions:
    """A record back to its exception set; a damaged record is one error line naming ``where``."""
    if not data:
        empty = np.zeros(shape, bool)
        return Exceptions(tuple(shape), None, empty, empty, np.zeros(0, np.int64))
    try:
        if len(data) < _HEAD.size + 4 or struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
            raise ValueError("CRC32 mismatch or truncated record")
        version, flags, rows, cols, padding_value = _HEAD.unpack_from(data)
        if version != VERSION:
            raise ValueError(f"unknown version {version}")
        if (rows, cols) != tuple(shape):
            raise ValueError(f"record of {rows}x{cols} pixels for a slice of {shape[0]}x{shape[1]}")
        body = zlib.decompress(data[_HEAD.size : -4])
        at, padding = 0, np.zeros(shape, bool)
        if flags & 1:
            padding, at = _mask_from(body, at, shape)
        other, at = _mask_from(body, at, shape)
        if (len(body) - at) % 4:
            raise ValueError("values of a partial width")
        values = np.frombuffer(body, "<i4", offset=at).astype(np.int64)
        if len(values) != int(other.sum()) or (padding & other).any():
            raise ValueError("masks and values disagree")
    except (ValueError, IndexError, zlib.error, struct.error) as exc:
        raise TTFTError(f"{where}: pixel exceptions unreadable ({exc})") from None
    return Exceptions(tuple(shape), padding_value if flags & 1 else None, padding, other, values)


def _mask_bytes(mask: np.ndarray) -> bytes:
    flat = mask.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
    runs = np.diff(np.concatenate([[0], edges])).astype(np.int64)  # unmarked, marked, unmarked, ...
    runs[2:] -= runs[:-2].copy()
    return _varints([len(runs)] + ((runs << 1) ^ (runs >> 63)).tolist())


def _mask_from(body: bytes, at: int, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    (count,), at = _read_varints(body, at, 1)
    zigzag, at = _read_varints(body, at, count)
    runs = np.array([(z >> 1) ^ -(z & 1) for z in zigzag], np.int64)
    runs[0::2], runs[1::2] = np.cumsum(runs[0::2]), np.cumsum(runs[1::2])  # undo the differences
    n = shape[0] * shape[1]
    if (runs < 0).any() or runs.sum() > n:
        raise ValueError("mask runs beyond the slice")
    edges = np.cumsum(runs)
    flat = np.zeros(n + 1, np.int8)
    np.add.at(flat, edges[0::2], 1)  # a marked run starts
    np.add.at(flat, edges[1::2], -1)  # and ends
    return np.cumsum(flat[:n]).astype(bool).reshape(shape), at


def _varints(numbers: list[int]) -> bytes:
    out = bytearray()
    for n in numbers:
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
    return bytes(out)


def _read_varints(data: bytes, at: int, count: int) -> tuple[list[int], int]:
    numbers = []
    for _ in range(count):
        n = shift = 0
        while True:
            byte = data[at]
            at += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        numbers.append(n)
    return numbers, at


def restore(stored: np.ndarray, exc: Exceptions) -> np.ndarray:
    """``stored`` (decoded values in the stored representation) with the exceptions put back exactly."""
    out = stored.copy()
    info = np.iinfo(out.dtype)
    values = exc.values
    if len(values) and (values.min() < info.min or values.max() > info.max):
        raise TTFTError(f"pixel exceptions hold values outside {out.dtype}")
    if exc.padding_value is not None:
        out[exc.padding] = exc.padding_value
    out[exc.other] = values
    return out


# ---- the item-level array ----
def write(root: zarr.Group, item_id: str, records: list[bytes], attrs: dict) -> None:
    """(Re)write item ``item_id``'s records in the archive whose root group is ``root``."""
    group = _require_group(_require_group(root, "items"), item_id)
    # as the archive's own byte arrays: zarr warns, whenever it writes their metadata, that the
    # dtype has no v3 specification yet
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*VariableLengthBytes.*")
        array = group.create_array(
            ARRAY,
            shape=(len(records),),
            chunks=(max(len(records), 1),),
            dtype=zarr.dtype.VariableLengthBytes(),
            fill_value=b"",
            overwrite=True,
        )
        array[:] = np.array(records, dtype=object)
        array.attrs.update({"format": FORMAT, "version": VERSION, **attrs})  # last: a record set without it is redone


def read(root: zarr.Group, item_id: str) -> tuple[list[bytes], dict] | None:
    """The item's records and attrs, or None when the item has none (an item written before them)."""
    group = root["items"][item_id]
    if ARRAY not in group or group[ARRAY].attrs.get("format") != FORMAT:
        return None
    array = group[ARRAY]
    if array.attrs.get("version", 0) > VERSION:
        raise TTFTError(
            f"item {item_id!r}: pixel exceptions version {array.attrs['version']} is newer than this reader"
        )
    try:
        records = [bytes(r) for r in array[:]]
    except Exception as exc:  # a chunk zarr cannot decode: name the item, not the codec stack
        raise TTFTError(f"item {item_id!r}: stored pixel exceptions are unreadable ({type(exc).__name__})") from None
    return records, dict(array.attrs)


def _require_group(parent: zarr.Group, name: str) -> zarr.Group:
    try:
        return parent.require_group(name)
    except zarr.errors.ContainsGroupError:  # another writer created it at the same moment
        return parent[name]


def stored_bytes(root: zarr.Group, item_id: str) -> int:
    """The bytes of the item's exception records (0 for an item without them)."""
    stored = read(root, item_id)
    return sum(len(r) for r in stored[0]) if stored else 0
