import hashlib
import threading
from pathlib import Path

import pytest
import torch

from ttft_archive.adapters import tile_records
from ttft_archive.adapters.archive import Archive, TileGrid, TileRecord
from ttft_archive.ttft_core import TTFTError

from .conftest import crop
from .s3_server import moto_s3
from .test_bitstream import make_codec

GRID = TileGrid(slices=1, rows=2, cols=2, tile_height=64, tile_width=64)


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def shard_file(url: Path, item: str, profile: str = "pixel", position=(0, 0, 0)) -> Path:
    """The file of one shard of a complete profile in a local archive."""
    return url / "items" / item / "profiles" / profile / "shards" / "c" / "/".join(str(i) for i in position)


def entry_middle(shard: bytes, n: int) -> int:
    """A byte in the middle of the ``n``-th tile's entry of a shard (as its header places it)."""
    *_, ends, header = tile_records.unpack_shard_header(shard)
    return header + (int(ends[n]) + int(ends[n + 1])) // 2


def fill(archive: Archive, item: str, image: torch.Tensor, complete: bool = True) -> list[bytes]:
    codec = make_codec("hyperprior", 3, adapter=False)
    archive.create_item(item, {"kind": "test", "crs": "EPSG:32618"}, GRID)
    profile = archive.profile(item, "pixel", {"codec": codec.codec_id})
    written = []
    for s, r, c in profile.indices():
        if (r, c) == (1, 1):
            profile.write_empty((s, r, c), key=f"{item}-empty")
            continue
        data = codec.compress(crop(image, r * 64, c * 64, 64, 64))
        profile.write_tile((s, r, c), TileRecord(data, key=hashlib.sha256(data).hexdigest(), ttft_steps=3))
        written.append(data)
    if complete:
        profile.mark_complete()
    return written


def test_tiles_round_trip_and_rewriting_the_same_keys_changes_no_byte(tmp_path, kodak_crop):
    url = str(tmp_path / "a.zarr")
    archive = Archive(url)
    written = fill(archive, "scene", kodak_crop)
    before = tree_digest(tmp_path / "a.zarr")
    fill(Archive(url), "scene", kodak_crop)  # the same again: nothing may change
    assert tree_digest(tmp_path / "a.zarr") == before
    profile = Archive(url).profile("scene", "pixel")
    assert profile.complete and profile.missing() == []
    assert [profile.read_tile(i) for i in [(0, 0, 0), (0, 0, 1), (0, 1, 0)]] == written
    assert profile.read_tile((0, 1, 1)) is None
    figures = profile.figures()
    assert figures["nbytes"][0, 0, 0] == len(written[0]) and figures["state"][0, 1, 1] == 2
    assert figures["ttft_steps"][0, 0, 1] == 3


def test_incomplete_profiles_and_mismatches_are_refused(tmp_path):
    archive = Archive(str(tmp_path / "a.zarr"))
    archive.create_item("scene", {"crs": "EPSG:4326"}, GRID)
    profile = archive.profile("scene", "edges", {"lmbda": 1})
    profile.write_empty((0, 0, 0), "k")
    with pytest.raises(TTFTError, match="still misses 3 tiles"):
        profile.mark_complete()
    assert not profile.complete and len(profile.missing()) == 3
    with pytest.raises(TTFTError, match="is missing"):
        profile.read_tile((0, 0, 1))
    with pytest.raises(TTFTError, match="another source"):
        archive.create_item("scene", {"crs": "EPSG:32618"}, GRID)
    with pytest.raises(TTFTError, match="other settings"):
        archive.profile("scene", "edges", {"lmbda": 2})
    with pytest.raises(TTFTError, match="no profile 'pixel'"):
        archive.profile("scene", "pixel")
    with pytest.raises(TTFTError, match="not usable"):
        archive.create_item("../evil", {}, GRID)


def test_corrupted_chunk_is_named(tmp_path, kodak_crop):
    url = tmp_path / "a.zarr"
    fill(Archive(str(url)), "scene", kodak_crop)
    shard = shard_file(url, "scene")
    raw = bytearray(shard.read_bytes())
    raw[8 + entry_middle(bytes(raw[8:]), 2)] ^= 0xFF  # inside the entry of tile (0, 1, 0), after a vlen prefix
    shard.write_bytes(bytes(raw))
    profile = Archive(str(url)).profile("scene", "pixel")
    assert profile.read_tile((0, 0, 0))  # its neighbours still read
    with pytest.raises(TTFTError, match=r"tile scene/pixel\[0, 1, 0\]"):
        profile.read_tile((0, 1, 0))


def test_a_folder_that_is_not_an_archive_is_refused(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_group("x")
    with pytest.raises(TTFTError, match="not a ttft-archive"):
        Archive(str(tmp_path / "other.zarr"))


def test_s3_archive_with_two_items_written_at_once(kodak_crop, landsat_crop):
    with moto_s3() as (options, bucket):
        url = f"s3://{bucket}/archives/a.zarr"
        results, errors = {}, []

        def ingest(item, image):
            try:
                results[item] = fill(Archive(url, storage_options=options), item, image)
            except Exception as exc:  # surfaced below: a thread's exception would otherwise be lost
                errors.append(exc)

        threads = [threading.Thread(target=ingest, args=a) for a in (("k", kodak_crop), ("l", landsat_crop))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        archive = Archive(url, storage_options=options)
        assert archive.item_ids() == ["k", "l"]
        for item, written in results.items():
            profile = archive.profile(item, "pixel")
            assert profile.complete
            assert profile.read_tile((0, 0, 1)) == written[1]
