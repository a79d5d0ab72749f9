"""Version-2 archives (tests/data/archive_v2.zarr, as the version-2 writer left it: one tile
record per chunk and an index array) read with the current code alike, and are completed in the
current layout when ingested again."""

import shutil
from pathlib import Path

import numpy as np
import rasterio

from ttft_archive.adapters.archive import VERSION, Archive
from ttft_archive.flows.jobs.raster import ingest_raster, query_raster
from ttft_archive.flows.jobs.tiles import listing, verify

from .common import crop_raster

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "archive_v2.zarr"
ITEM = "v2src_nodata"
SETTINGS = dict(codec="hyperprior-small", ttft_steps=0, tile=64)


def nodata_source(folder: Path) -> Path:
    """The fixture's source: a 128 crop of the bundled Landsat excerpt with nodata 0 over a whole
    tile, inside a coded tile, and in one band only (a per-band mask)."""
    path = folder / f"{ITEM}.tif"
    crop = crop_raster(folder / "crop.tif", 128)
    with rasterio.open(crop) as f:
        profile, data = f.profile, f.read()
    data[:, :64, :64] = 0
    data[:, 10:30, 64:100] = 0
    data[0, 40:50, 70:80] = 0
    with rasterio.open(path, "w", **(profile | {"nodata": 0})) as f:
        f.write(data)
    return path


def test_a_version2_archive_reads_as_the_current_one_writes(tmp_path):
    old = tmp_path / "v2.zarr"
    shutil.copytree(FIXTURE, old)
    new = tmp_path / "new.zarr"
    ingest_raster(str(nodata_source(tmp_path)), str(new), **SETTINGS)
    a, b = Archive(str(old), create=False), Archive(str(new), create=False)
    assert (a.version, b.version) == (2, VERSION)
    pa, pb = a.profile(ITEM, "pixel"), b.profile(ITEM, "pixel")
    assert (pa.version, pb.version) == (2, VERSION) and pa.complete and pb.complete
    assert pa.figures()["state"].tolist() == [[[2, 1], [1, 1]]]
    for i in pa.indices():
        assert pa.read_tile(i) == pb.read_tile(i)
        if pa.read_tile(i) is not None:
            assert np.array_equal(pa.nodata_missing(i), pb.nodata_missing(i))
    assert pa.keys() == pb.keys()
    qa, qb = query_raster(str(old), ITEM), query_raster(str(new), ITEM)
    assert np.array_equal(qa["array"], qb["array"]) and np.array_equal(qa["valid"], qb["valid"])
    assert not qa["valid"][:, :64, :64].any() and not qa["valid"][0, 40:50, 70:80].any()
    assert listing(str(old))[0]["profiles"] == listing(str(new))[0]["profiles"]
    assert verify(str(old)) == []


def test_a_version2_profile_ingested_again_is_completed_in_the_current_layout(tmp_path):
    old = tmp_path / "v2.zarr"
    shutil.copytree(FIXTURE, old)
    before = query_raster(str(old), ITEM)
    report = ingest_raster(str(nodata_source(tmp_path)), str(old), **SETTINGS)
    assert report["complete"] and report["written_tiles"] == 0
    archive = Archive(str(old), create=False)
    profile = archive.profile(ITEM, "pixel")
    assert archive.version == VERSION and profile.version == VERSION and profile.complete
    assert sorted(p.name for p in (old / "items" / ITEM / "profiles" / "pixel").iterdir()) == ["shards", "zarr.json"]
    after = query_raster(str(old), ITEM)
    assert np.array_equal(before["array"], after["array"]) and np.array_equal(before["valid"], after["valid"])
    assert verify(str(old)) == []
