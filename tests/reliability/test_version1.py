"""Version-1 archives (written here by a frozen copy of the version-1 writer) read with the
current code: the same bitstreams, figures, masks and decoded pixels as the current version gives."""

import numpy as np
import pytest

from ttft_archive.adapters.archive import VERSION, Archive, TileRecord
from ttft_archive.flows.jobs import raster as raster_jobs
from ttft_archive.flows.jobs import tiles as tile_jobs
from ttft_archive.flows.jobs.raster import ingest_raster, query_raster
from ttft_archive.flows.jobs.tiles import listing, verify
from ttft_archive.ttft_core import TTFTError

from ..test_archive import fill
from . import archive_v1

CODEC = "hyperprior-small"


def test_a_version1_archive_reads_and_checks_as_before(tmp_path, kodak_crop):
    url = str(tmp_path / "v1.zarr")
    written = fill(archive_v1.Archive(url), "scene", kodak_crop)
    archive = Archive(url, create=False)
    assert archive.version == 1 and archive.item_ids() == ["scene"]
    profile = archive.profile("scene", "pixel")
    assert profile.version == 1 and profile.complete and profile.missing() == []
    assert [profile.read_tile(i) for i in [(0, 0, 0), (0, 0, 1), (0, 1, 0)]] == written
    assert profile.read_tile((0, 1, 1)) is None and profile.nodata_mask((0, 0, 0)) == b""
    figures = profile.figures()
    assert figures["nbytes"][0, 0, 0] == len(written[0]) and figures["state"][0, 1, 1] == 2
    assert verify(url) == []
    with pytest.raises(TTFTError, match="version-1 layout, which is read but not written"):
        Archive(url).profile("scene", "pixel").write_tile((0, 0, 0), TileRecord(written[0], "other"))


def test_the_same_ingest_again_into_a_version1_profile_codes_nothing(tmp_path, monkeypatch):
    """Through the command line and the Prefect flows' planning (which reads every stored key)."""
    from ttft_archive.flows.jobs.tiles import tiles_to_code

    from .common import FAST, cli, crop_raster

    source = crop_raster(tmp_path / "scene.tif")
    url = str(tmp_path / "v1.zarr")
    with monkeypatch.context() as m:  # the version-1 writer under the current flows
        for module in (raster_jobs, tile_jobs):
            m.setattr(module, "Archive", archive_v1.Archive)
        assert cli("ingest", source, "--archive", url, *FAST)[0] == 0
    job = raster_jobs.plan_raster(str(source), url, raster_jobs.IngestOptions(codec=CODEC, ttft_steps=0, tile=64))
    assert all(key for _, key in tiles_to_code(job)) and len(tiles_to_code(job)) == 0
    code, out, err = cli("ingest", source, "--archive", url, *FAST)
    assert code == 0 and "0 written now" in out, err


def test_a_version1_archive_takes_new_profiles_in_the_current_layout(tmp_path, kodak_crop):
    url = str(tmp_path / "v1.zarr")
    fill(archive_v1.Archive(url), "scene", kodak_crop)
    fill(Archive(url), "new", kodak_crop)
    archive = Archive(url, create=False)
    assert archive.version == VERSION
    assert archive.profile("scene", "pixel").version == 1 and archive.profile("new", "pixel").version == VERSION
    assert verify(url) == []


def test_a_version1_raster_ingest_queries_to_the_same_pixels(tmp_path, monkeypatch, shared_data):
    """The same scene (nodata inside coded tiles, bands that disagree) ingested by the version-1
    writer and by the current one: equal bitstreams, nodata and pixels; listings agree."""
    source = str(shared_data / "satellite" / "rgb_byte_nodata0.tif")
    v2 = str(tmp_path / "v2.zarr")
    report = ingest_raster(source, v2, tile=256, codec=CODEC, ttft_steps=0)
    with monkeypatch.context() as m:  # the version-1 writer under the current flows
        for module in (raster_jobs, tile_jobs):
            m.setattr(module, "Archive", archive_v1.Archive)
        v1 = str(tmp_path / "v1.zarr")
        ingest_raster(source, v1, tile=256, codec=CODEC, ttft_steps=0)
    assert Archive(v1, create=False).version == 1
    a, b = Archive(v1).profile(report["id"], "pixel"), Archive(v2).profile(report["id"], "pixel")
    assert (a.version, b.version) == (1, VERSION)
    assert all(a.read_tile(i) == b.read_tile(i) for i in a.indices())
    for i in a.indices():
        if a.read_tile(i) is not None:
            assert np.array_equal(a.nodata_missing(i), b.nodata_missing(i))
    fa, fb = a.figures(), b.figures()
    for name in fa:
        np.testing.assert_array_equal(fa[name], fb[name])
    qa, qb = query_raster(v1, report["id"]), query_raster(v2, report["id"])
    assert np.array_equal(qa["array"], qb["array"]) and np.array_equal(qa["valid"], qb["valid"])
    la, lb = listing(v1), listing(v2)
    for pa, pb in zip(la[0]["profiles"], lb[0]["profiles"]):
        assert {k: v for k, v in pa.items()} == {k: v for k, v in pb.items()}
    assert verify(v1) == [] and verify(v2) == []
