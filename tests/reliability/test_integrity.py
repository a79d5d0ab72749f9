"""Each case damages, edits or half-writes an archive and checks that reading it refuses with one
line naming archive, item/profile and tile, or that the next ingest mends it."""

import base64
import json
import shutil
import struct
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from ttft_archive.adapters import archive as archive_module
from ttft_archive.adapters import tile_records
from ttft_archive.adapters.archive import Archive
from ttft_archive.adapters.tile_records import unpack_index
from ttft_archive.flows.jobs.raster import ingest_raster, query_raster
from ttft_archive.flows.jobs.tiles import verify
from ttft_archive.ttft_core import TTFTError

from ..conftest import SAMPLES
from ..test_archive import entry_middle, fill, shard_file

LANDSAT = SAMPLES / "landsat8_224078_rgb_crop256.tif"
ITEM = "landsat8_224078_rgb_crop256"
CODEC = "hyperprior-small"


def chunk(url: Path, index, item: str = "scene", profile: str = "pixel", array: str = "tiles") -> Path:
    return url / "items" / item / "profiles" / profile / array / "c" / "/".join(str(i) for i in index)


def zarr_attrs(path: Path) -> tuple[dict, dict]:
    meta = json.loads((path / "zarr.json").read_text())
    return meta, meta.setdefault("attributes", {})


def write_attrs(path: Path, meta: dict) -> None:
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.fixture
def filled(tmp_path, kodak_crop):
    """A complete profile of four tiles in one shard: (0,0,0), (0,0,1), (0,1,0) coded, (0,1,1) empty."""
    url = tmp_path / "a.zarr"
    written = fill(Archive(str(url)), "scene", kodak_crop)
    return url, written


@pytest.fixture
def coding(tmp_path, kodak_crop):
    """The same four tiles in a profile still being coded: one tile record per chunk."""
    url = tmp_path / "a.zarr"
    written = fill(Archive(str(url)), "scene", kodak_crop, complete=False)
    return url, written


@pytest.fixture
def one_tile_shards(monkeypatch):
    """Shards of one tile each, so that a profile of four tiles has four shards to swap."""
    monkeypatch.setattr(tile_records, "SHARD_SIDE", 1)


def open_profile(url: Path):
    return Archive(str(url)).profile("scene", "pixel")


def _vlen(path: Path) -> bytes:
    raw = path.read_bytes()  # a vlen-bytes chunk: count u32, length u32, the one element
    return raw[8:]


def _write_vlen(path: Path, element: bytes) -> None:
    path.write_bytes(struct.pack("<II", 1, len(element)) + element)


def test_a_flipped_byte_in_a_tile_entry_is_refused_and_named_and_its_neighbours_read(filled):
    url, written = filled
    path = shard_file(url, "scene")
    raw = bytearray(path.read_bytes())
    raw[8 + entry_middle(bytes(raw[8:]), 1)] ^= 0x01
    path.write_bytes(bytes(raw))
    profile = open_profile(url)
    with pytest.raises(TTFTError, match=rf"{url}: tile scene/pixel\[0, 0, 1\]: .*CRC32C") as err:
        profile.read_tile((0, 0, 1))
    assert "\n" not in str(err.value)
    assert profile.read_tile((0, 0, 0)) == written[0] and profile.read_tile((0, 1, 0)) == written[2]
    assert [p for p in verify(str(url)) if "[0, 0, 1]" in p] and len(verify(str(url))) == 1


def test_a_flipped_byte_in_a_tile_record_is_refused_and_named(coding):
    url, _ = coding
    path = chunk(url, (0, 0, 1))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(TTFTError, match=rf"{url}: tile scene/pixel\[0, 0, 1\]: .*CRC32C"):
        open_profile(url).read_tile((0, 0, 1))
    assert open_profile(url).key((0, 0, 1)) == ""  # coded again by the next ingest


def test_a_damaged_shard_header_or_a_truncated_shard_is_refused_in_one_line(filled):
    url, _ = filled
    path = shard_file(url, "scene")
    good = path.read_bytes()
    header_byte = 8 + 4 + 1 + 4  # vlen prefix, magic, version: the first tile's slice
    for damaged in (good[:-100], good[:header_byte] + bytes([good[header_byte] ^ 1]) + good[header_byte + 1 :]):
        path.write_bytes(damaged)
        with pytest.raises(TTFTError, match=rf"{url}: shard scene/pixel\[0, 0, 0\] \(tiles \[0, 0, 0\] on\)"):
            open_profile(url).read_tile((0, 1, 0))
        problems = verify(str(url))
        assert len(problems) == 1 and "shard scene/pixel[0, 0, 0]" in problems[0]


def test_a_deleted_shard_is_missing_and_the_next_ingest_mends_it(filled, kodak_crop):
    url, written = filled
    shard_file(url, "scene").unlink()
    with pytest.raises(TTFTError, match=r"tile scene/pixel\[0, 0, 0\] is missing"):
        open_profile(url).read_tile((0, 0, 0))
    assert verify(str(url)) == [
        f"{url}: tile scene/pixel{list(i)} is missing from the archive" for i in np.ndindex(1, 2, 2)
    ]
    fill(Archive(str(url)), "scene", kodak_crop)  # the same ingest again codes the tiles again
    profile = open_profile(url)
    assert profile.complete and verify(str(url)) == [] and profile.read_tile((0, 0, 0)) == written[0]


def test_a_deleted_tile_record_is_missing_and_the_next_ingest_mends_it(coding, kodak_crop):
    url, written = coding
    chunk(url, (0, 0, 0)).unlink()
    assert open_profile(url).missing() == [(0, 0, 0)]
    fill(Archive(str(url)), "scene", kodak_crop)
    profile = open_profile(url)
    assert profile.complete and verify(str(url)) == [] and profile.read_tile((0, 0, 0)) == written[0]
    assert not (url / "items" / "scene" / "profiles" / "pixel" / "tiles").exists()  # the shards hold them now


def test_two_swapped_shards_are_refused_by_read_and_verify(tmp_path, kodak_crop, one_tile_shards):
    url = tmp_path / "a.zarr"
    fill(Archive(str(url)), "scene", kodak_crop)
    a, b = shard_file(url, "scene", position=(0, 0, 0)), shard_file(url, "scene", position=(0, 0, 1))
    raw_a, raw_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(raw_b), b.write_bytes(raw_a)
    profile = open_profile(url)
    with pytest.raises(TTFTError, match=r"shard scene/pixel\[0, 0, 0\] .*holds the shard of tiles \[0, 0, 1\] on"):
        profile.read_tile((0, 0, 0))
    problems = verify(str(url))
    assert len(problems) == 2 and "scene/pixel[0, 0, 0]" in problems[0] and "scene/pixel[0, 0, 1]" in problems[1]


def test_two_swapped_tile_records_are_refused(coding):
    url, _ = coding
    a, b = chunk(url, (0, 0, 0)), chunk(url, (0, 0, 1))
    raw_a, raw_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(raw_b), b.write_bytes(raw_a)
    with pytest.raises(TTFTError, match=r"tile scene/pixel\[0, 0, 0\]: the chunk holds the record of tile"):
        open_profile(url).read_tile((0, 0, 0))
    assert open_profile(url).missing() == [(0, 0, 0), (0, 0, 1)]


def test_a_shard_copied_from_another_item_is_refused(tmp_path, kodak_crop, landsat_crop):
    url = tmp_path / "a.zarr"
    fill(Archive(str(url)), "k", kodak_crop)
    fill(Archive(str(url)), "l", landsat_crop)
    shard_file(url, "k").write_bytes(shard_file(url, "l").read_bytes())
    with pytest.raises(
        TTFTError, match=r"shard k/pixel\[0, 0, 0\] .*holds the shard of tiles \[0, 0, 0\] on of l/pixel"
    ):
        Archive(str(url)).profile("k", "pixel").read_tile((0, 0, 0))


def test_swapped_shards_are_refused_by_query_and_verify(tmp_path, one_tile_shards):
    url = tmp_path / "a.zarr"
    report = ingest_raster(str(LANDSAT), str(url), tile=128, codec=CODEC, ttft_steps=0)
    assert report["coded_tiles"] == 4 and verify(str(url)) == []
    a, b = shard_file(url, ITEM, position=(0, 0, 1)), shard_file(url, ITEM, position=(0, 1, 0))
    raw_a, raw_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(raw_b), b.write_bytes(raw_a)
    with pytest.raises(TTFTError, match=rf"{url}: shard {ITEM}/pixel\[0, 0, 1\]"):
        query_raster(str(url), ITEM)
    assert [p.split(": ")[1].split(" (")[0] for p in verify(str(url))] == [
        f"shard {ITEM}/pixel[0, 0, 1]",
        f"shard {ITEM}/pixel[0, 1, 0]",
    ]


def test_an_edited_state_key_or_bitstream_inside_a_shard_entry_is_refused(filled):
    url, written = filled
    path = shard_file(url, "scene")
    shard = _vlen(path)
    item, name, first, extent, tiles = tile_records.unpack_shard(shard)
    tile = tiles[0]
    at = shard.find(tile_records.tile_entry(tile))  # the entry of tile (0, 0, 0): its state byte first
    end = at + len(tile_records.tile_entry(tile)) - 4  # then its bitstream's last byte, before the entry's CRC
    key_at = shard.find(bytes.fromhex(tile.key), at)
    for edit in (
        shard[:at] + bytes([2]) + shard[at + 1 :],  # coded -> empty
        shard[:key_at] + bytes(32) + shard[key_at + 32 :],  # another key
        shard[: end - 1] + bytes([shard[end - 1] ^ 1]) + shard[end:],  # another bitstream
    ):
        _write_vlen(path, edit)
        with pytest.raises(TTFTError, match=r"tile scene/pixel\[0, 0, 0\]: tile shard entry checksum"):
            open_profile(url).read_tile((0, 0, 0))
        assert len(verify(str(url))) == 1


def test_an_entry_forged_with_a_fresh_crc_is_caught_by_the_index(filled):
    """Someone who rewrites a shard with fresh checksums (a key or figure edited on purpose) still
    does not match the index the profile was completed with."""
    url, _ = filled
    path = shard_file(url, "scene")
    item, name, first, extent, tiles = tile_records.unpack_shard(_vlen(path))
    tiles[1] = replace(tiles[1], ttft_steps=99)
    _write_vlen(path, tile_records.pack_shard(item, name, first, extent, tiles))
    profile = open_profile(url)
    assert profile.read_tile((0, 0, 1)) == tiles[1].data  # the entry itself is well formed
    assert verify(str(url)) == [f"{url}: tile scene/pixel[0, 0, 1]: the profile index does not match the tile's record"]


def test_an_edited_index_is_refused_by_listings_and_verify(filled):
    url, written = filled
    group = url / "items" / "scene" / "profiles" / "pixel"
    meta, attrs = zarr_attrs(group)
    raw = base64.b64decode(attrs["index"])
    attrs["index"] = base64.b64encode(raw[:20] + bytes([raw[20] ^ 0xFF]) + raw[21:]).decode()
    write_attrs(group, meta)
    with pytest.raises(TTFTError, match=rf"{url}: profile scene/pixel: .*index"):
        open_profile(url).figures()
    assert any("profile scene/pixel" in p and "index" in p for p in verify(str(url)))
    # an index re-sealed with its own CRC disagrees with the tiles
    item, profile, shape, figures, keys, crcs = unpack_index(raw)
    figures["nbytes"][0, 0, 0] += 1
    attrs["index"] = base64.b64encode(tile_records.pack_index(item, profile, shape, figures, keys, crcs)).decode()
    write_attrs(group, meta)
    assert open_profile(url).figures()["nbytes"][0, 0, 0] == len(written[0]) + 1
    assert verify(str(url)) == [f"{url}: tile scene/pixel[0, 0, 0]: the profile index does not match the tile's record"]


def test_edited_attributes_are_refused(filled):
    url, _ = filled
    group = url / "items" / "scene" / "profiles" / "pixel"
    meta, attrs = zarr_attrs(group)
    attrs["settings"]["codec"] = "another"
    write_attrs(group, meta)
    with pytest.raises(TTFTError, match=r"profile scene/pixel: attributes do not match their checksum"):
        open_profile(url)
    assert any("scene/pixel: attributes do not match" in p for p in verify(str(url)))

    item = url / "items" / "scene"
    meta, attrs = zarr_attrs(item)
    attrs["grid"]["tile_width"] = 32
    write_attrs(item, meta)
    with pytest.raises(TTFTError, match=r"item 'scene': attributes do not match their checksum"):
        Archive(str(url)).grid("scene")


def test_a_missing_completion_marker_makes_the_profile_incomplete(tmp_path):
    url = tmp_path / "a.zarr"
    ingest_raster(str(LANDSAT), str(url), tile=128, codec=CODEC, ttft_steps=0)
    group = url / "items" / ITEM / "profiles" / "pixel"
    meta, attrs = zarr_attrs(group)
    del attrs["complete"]
    write_attrs(group, meta)
    with pytest.raises(TTFTError, match="not complete"):
        query_raster(str(url), ITEM)
    assert verify(str(url)) == [f"{url}: profile {ITEM}/pixel: incomplete (0 tiles missing)"]
    report = ingest_raster(str(LANDSAT), str(url), tile=128, codec=CODEC, ttft_steps=0)
    assert report["complete"] and report["written_tiles"] == 0 and verify(str(url)) == []


def _half_create_profile(url: Path, item: str, grid_shape, v1_arrays: bool) -> None:
    """What a process killed while creating a profile leaves: its group and some of its arrays,
    no attributes."""
    group = zarr.open_group(str(url / "items" / item), mode="a").require_group("profiles").require_group("pixel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if v1_arrays:  # version 1 created its arrays one by one, attributes last
            group.create_array("tiles", shape=grid_shape, chunks=(1, 1, 1), dtype=zarr.dtype.VariableLengthBytes())
            group.create_array("keys", shape=grid_shape, chunks=(1, 1, 1), dtype=zarr.dtype.VariableLengthBytes())
            group.create_array("state", shape=grid_shape, chunks=(1, 1, 1), dtype="uint8", fill_value=0)
        else:  # version 2 creates its tile array, then its attributes
            group.create_array("tiles", shape=grid_shape, chunks=(1, 1, 1), dtype=zarr.dtype.VariableLengthBytes())


@pytest.mark.parametrize("v1_arrays", [True, False])
def test_a_half_created_profile_is_finished_by_the_next_ingest(tmp_path, v1_arrays):
    url = tmp_path / "a.zarr"
    first = ingest_raster(str(LANDSAT), str(url), tile=128, codec=CODEC, ttft_steps=0)
    half = url / "items" / ITEM / "profiles" / "pixel"
    shutil.rmtree(half)  # the item stays; its profile is made again, and killed half way
    _half_create_profile(url, ITEM, (1, 2, 2), v1_arrays)
    archive = Archive(str(url))
    assert archive.profile_names(ITEM) == [] and archive.profile_names(ITEM, unfinished=True) == ["pixel"]
    assert verify(str(url)) == [f"{url}: profile {ITEM}/pixel was not completely created (ingest it again)"]
    with pytest.raises(TTFTError, match="not completely created"):
        query_raster(str(url), ITEM)
    report = ingest_raster(str(LANDSAT), str(url), tile=128, codec=CODEC, ttft_steps=0)
    assert report["complete"] and report["coded_tiles"] == 4 and report["bytes"] == first["bytes"]
    assert verify(str(url)) == []
    assert sorted(p.name for p in half.iterdir()) == ["shards", "zarr.json"]


def test_a_half_created_item_is_finished_by_the_next_ingest(tmp_path):
    url = tmp_path / "a.zarr"
    Archive(str(url))
    zarr.open_group(str(url), mode="a").require_group("items").require_group(ITEM)  # killed before its attributes
    archive = Archive(str(url))
    assert archive.item_ids() == [] and archive.item_ids(unfinished=True) == [ITEM]
    assert verify(str(url)) == [f"{url}: item {ITEM!r} was not completely created (ingest it again)"]
    report = ingest_raster(str(LANDSAT), str(url), tile=128, codec=CODEC, ttft_steps=0)
    assert report["complete"] and verify(str(url)) == [] and Archive(str(url)).item_ids() == [ITEM]


def test_changed_codec_weights_are_found_by_verify(tmp_path, monkeypatch):
    import torch

    from ttft_archive.adapters.zoo import open_codec, save_codec

    zoo = tmp_path / "zoo"
    monkeypatch.setenv("TTFT_ZOO_PATH", str(zoo))
    model, _, _ = open_codec(CODEC, channels=3)
    card = {"lambda": 0.01, "family": "rgb"}
    save_codec(zoo, "test-rgb", model, card)
    url = tmp_path / "a.zarr"
    ingest_raster(str(LANDSAT), str(url), tile=128, codec="test-rgb", ttft_steps=0)
    assert verify(str(url)) == []
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # other weights under the same id (their card agrees)
    save_codec(zoo, "test-rgb", model, card)
    assert verify(str(url)) == [
        f"{url}: profile {ITEM}/pixel: codec 'test-rgb' here is not the one the archive was written with"
    ]


def test_a_tile_coded_with_another_codec_than_the_profile_says_is_found(tmp_path):
    """The profile's settings name codec and adapter digests per channel count; every coded tile's
    bitstream header must name the same (a record forged into another profile's settings)."""
    url = tmp_path / "a.zarr"
    ingest_raster(str(LANDSAT), str(url), tile=128, codec=CODEC, ttft_steps=0)
    profile = Archive(str(url)).profile(ITEM, "pixel")
    group = url / "items" / ITEM / "profiles" / "pixel"
    meta, attrs = zarr_attrs(group)
    attrs["settings"]["coders"]["3"]["codec_sha256"] = "0" * 64
    attrs["checksum"] = archive_module._attrs_checksum(f"{ITEM}/pixel", archive_module._checked_attrs(attrs))
    write_attrs(group, meta)
    problems = verify(str(url))
    assert problems[0].endswith("here is not the one the archive was written with")
    assert [p.split(": ")[1] for p in problems[1:]] == [f"tile {ITEM}/pixel{list(i)}" for i in profile.indices()]


def test_nodata_masks_round_trip_in_every_kind():
    from ttft_archive.adapters.tile_records import MASK_DATASET, MASK_NONE, MASK_PER_BAND, decode_mask, encode_mask

    rng = np.random.default_rng(0)
    shape = (3, 50, 70)
    none = np.zeros(shape, bool)
    dataset = np.broadcast_to(np.arange(70)[None, None] < 20, shape).copy()
    per_band = dataset.copy()
    per_band[1] |= rng.random((50, 70)) < 0.01  # legitimate zeros of one band read as nodata
    for missing, kind in ((none, MASK_NONE), (dataset, MASK_DATASET), (per_band, MASK_PER_BAND)):
        k, packed = encode_mask(missing)
        assert k == kind and np.array_equal(decode_mask(k, packed, shape), missing)
    assert encode_mask(none)[1] == b""
    with pytest.raises(TTFTError, match="nodata mask"):
        decode_mask(MASK_PER_BAND, encode_mask(per_band)[1], (2, 50, 70))
