"""Fuzzing the readers of stored bytes: whatever they are given, nothing but TTFTError (or its
BitstreamError) may come out. Bytes under a valid CRC32C reach the parsers behind the checksum."""

import math
import struct

import google_crc32c
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttft_archive.adapters import tile_records as records
from ttft_archive.ttft_core import TTFTError, bitstream

FAST = settings(max_examples=300, deadline=200, suppress_health_check=[HealthCheck.too_slow])


def sealed(body: bytes) -> bytes:
    return body + struct.pack("<I", google_crc32c.value(body))


def expect_only_ttft_errors(reader, data) -> None:
    try:
        reader(data)
    except TTFTError:
        pass


def _bitstream_sample() -> bytes:
    header = bitstream.TileHeader("codec", bytes(32), "adapter", bytes(32), 3, 10, 12, 64, 64, 0.5, 3, 4, (4, 4))
    return bitstream.pack(bitstream.TilePayload(header, b"s" * 5, b"z" * 7, b"y" * 9))


BITSTREAM = _bitstream_sample()
RECORD = records.pack_record(
    records.StoredTile("item", "pixel", (0, 1, 2), "k" * 64, records.CODED, BITSTREAM, 0.5, 3, 1.5, 1, b"\x78\x9c")
)
INDEX = records.pack_index(
    "item",
    "pixel",
    (1, 1, 2),
    {name: np.full((1, 1, 2), fill, dtype) for name, (dtype, fill) in records.FIGURES.items()},
    ["a", "b"],
    np.zeros((1, 1, 2), np.uint32),
)

SHARD_TILES = [
    records.StoredTile("item", "pixel", (0, 0, 0), "k" * 64, records.CODED, BITSTREAM, 0.5, 3, 1.5, 1, b"\x78\x9c"),
    records.StoredTile("item", "pixel", (0, 0, 1), "e", records.EMPTY),
]
SHARD = records.pack_shard("item", "pixel", (0, 0, 0), (1, 1, 2), SHARD_TILES)


def shard_of_entries(entries: list[bytes]) -> bytes:
    """A shard around these entries, its header (places, CRC32C) made valid for them."""
    ends = np.cumsum([0] + [len(e) for e in entries]).astype("<u4").tobytes()
    header = records._SHARD_FIXED.pack(b"TTFS", 1, 0, 0, 0, 1, 1, len(entries)) + b"\x04\x00item\x05\x00pixel" + ends
    return sealed(header) + b"".join(entries)


def mutations(sample: bytes):
    """Random bytes, and the sample cut, flipped or spliced, with its checksum made valid again."""
    cut = st.integers(0, len(sample))
    edits = st.tuples(cut, cut, st.binary(max_size=16)).map(lambda t: sample[: t[0]] + t[2] + sample[t[1] :])
    flips = st.tuples(st.integers(0, len(sample) - 1), st.integers(1, 255)).map(
        lambda t: sample[: t[0]] + bytes([sample[t[0]] ^ t[1]]) + sample[t[0] + 1 :]
    )
    resealed = st.one_of(edits, flips).map(lambda b: sealed(b[:-4]) if len(b) >= 4 else b)
    return st.one_of(st.binary(max_size=300), edits, flips, resealed)


@FAST
@given(mutations(BITSTREAM))
def test_the_bitstream_reader_raises_only_bitstream_errors(data):
    try:
        bitstream.unpack(data)
    except bitstream.BitstreamError:
        pass


@FAST
@given(mutations(RECORD))
def test_the_tile_record_reader_raises_only_ttft_errors(data):
    expect_only_ttft_errors(records.unpack_record, data)


@FAST
@given(mutations(INDEX))
def test_the_index_reader_raises_only_ttft_errors(data):
    expect_only_ttft_errors(records.unpack_index, data)


@FAST
@given(mutations(SHARD))
def test_the_shard_reader_raises_only_ttft_errors(data):
    try:
        _, _, _, extent, tiles = records.unpack_shard(data)
    except TTFTError:
        return
    assert len(tiles) == np.prod(extent) and all(isinstance(t, (records.StoredTile, TTFTError)) for t in tiles)


@FAST
@given(mutations(records.tile_entry(SHARD_TILES[0])))
def test_a_damaged_entry_costs_its_tile_alone(entry):
    """An entry cut, flipped or spliced (its CRC32C made valid again) in a shard whose header
    places it: that tile is an error or a tile, its neighbour reads as it was stored."""
    entries = [entry, records.tile_entry(SHARD_TILES[1])]
    try:
        _, _, _, _, tiles = records.unpack_shard(shard_of_entries(entries))
    except TTFTError:  # an entry shorter than its CRC: the header cannot place it
        assert len(entry) < 4
        return
    assert isinstance(tiles[0], (records.StoredTile, TTFTError))
    assert records.tile_entry(tiles[1]) == records.tile_entry(SHARD_TILES[1]) and tiles[1].index == (0, 0, 1)


@FAST
@given(st.sampled_from([0, 1, 2, 7]), st.binary(max_size=64), st.integers(1, 4), st.integers(1, 20), st.integers(1, 20))
def test_the_mask_reader_raises_only_ttft_errors(kind, packed, bands, h, w):
    try:
        mask = records.decode_mask(kind, packed, (bands, h, w))
    except TTFTError:
        return
    assert mask.shape == (bands, h, w) and mask.dtype == bool


@FAST
@given(
    st.text(max_size=20),
    st.text(max_size=20),
    st.tuples(*[st.integers(0, 2**32 - 1)] * 3),
    st.one_of(st.text(max_size=70), st.binary(min_size=32, max_size=32).map(bytes.hex)),
    st.sampled_from([records.CODED, records.EMPTY]),
    st.floats(allow_nan=True),
    st.integers(-(2**31), 2**31 - 1),
    st.floats(width=32, allow_nan=False),
)
def test_records_round_trip(item, profile, index, key, state, fidelity, steps, seconds):
    data = BITSTREAM if state == records.CODED else b""
    tile = records.StoredTile(item, profile, index, key, state, data, fidelity, steps, seconds)
    back = records.unpack_record(records.pack_record(tile))
    assert (back.item, back.profile, back.index, back.key, back.state, back.data) == (
        item,
        profile,
        index,
        key,
        state,
        data,
    )
    assert back.fidelity == fidelity or (math.isnan(back.fidelity) and math.isnan(fidelity))
    assert (back.ttft_steps, back.ttft_seconds) == (steps, seconds)
