"""What a query writes, as GIS software reads it: a Cloud-Optimized GeoTIFF carrying the source's
tags, band scales, offsets, units, descriptions and colour interpretation; the band meaning that
cross-band tasks take from the colour interpretation; outputs on S3; what `ls` says of bands."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from ttft_archive.adapters import raster
from ttft_archive.adapters.archive import Archive
from ttft_archive.flows.jobs.raster import cross_band_mapping, ingest_raster, query_raster
from ttft_archive.ttft_core import TTFTError

from .cog_check import COMPRESSION, EXTRA_SAMPLES, PHOTOMETRIC, PREDICTOR, cog_errors, directories
from .conftest import ROOT, SAMPLES
from .s3_server import moto_s3
from .test_archive import tree_digest

CODEC = "hyperprior-small"
RGBN = SAMPLES / "rgbn_4band_20160517_crop192.tif"
TAGS = {"SENSOR": "PlanetScope", "ACQUIRED": "2016-05-17", "AREA_OR_POINT": "Point"}
BAND_TAGS = [{"WAVELENGTH": "665"}, {"WAVELENGTH": "560"}, {"WAVELENGTH": "490"}, {"WAVELENGTH": "842"}]
SCALES, OFFSETS = (0.01, 0.01, 0.01, 0.004), (0.0, 0.0, 0.0, -0.1)
UNITS = ("reflectance", "reflectance", "reflectance", "reflectance")
DESCRIPTIONS = (None, None, None, "nir")


def make_rgbn(path, height=576, width=640):
    """A red, green, blue, NIR GeoTIFF (bands 1-3 red, green, blue, band 4 undefined, not alpha)
    with dataset and band tags, scales, offsets, units and a description of band 4."""
    with rasterio.open(RGBN) as src:
        data, crs, transform = src.read(), src.crs, src.transform
    data = np.tile(data, (1, -(-height // data.shape[1]), -(-width // data.shape[2])))[:, :height, :width]
    profile = dict(driver="GTiff", height=height, width=width, count=4, dtype="uint8", crs=crs, transform=transform)
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        with rasterio.open(path, "w", photometric="RGB", alpha="UNSPECIFIED", **profile) as dst:
            dst.write(data)
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
            dst.update_tags(**TAGS)
            for b, tags in enumerate(BAND_TAGS, start=1):
                dst.update_tags(b, **tags)
            dst.scales, dst.offsets, dst.units = SCALES, OFFSETS, UNITS
            dst.descriptions = DESCRIPTIONS
    with rasterio.open(path) as check:  # what the tests rely on
        assert [c.name for c in check.colorinterp] == ["red", "green", "blue", "undefined"]
        assert check.tags(4) == BAND_TAGS[3] and check.units == UNITS
    return path


@pytest.fixture(scope="module")
def rgbn_archive(tmp_path_factory):
    """The RGBN scene ingested once (pixel, an RGB group and the NIR band), and its query's output."""
    tmp = tmp_path_factory.mktemp("rgbn")
    source = make_rgbn(tmp / "scene.tif")
    url = str(tmp / "a.zarr")
    report = ingest_raster(str(source), url, tile=320, codec=CODEC, bands=[[1, 2, 3], [4]], ttft_steps=0)
    out = tmp / "out" / "new" / "q.tif"  # its folders do not exist yet: the query makes them
    result = query_raster(url, report["id"], out=str(out))
    return source, url, report, out, result


def test_query_writes_a_cloud_optimized_geotiff(rgbn_archive, tmp_path):
    _, _, _, out, result = rgbn_archive
    with rasterio.open(out) as q:
        assert q.profile["tiled"] and q.block_shapes == [(256, 256)] * 4
        assert q.overviews(1) == [2, 4]  # 640 x 576 down to one 256-pixel tile: 320, then 160
        assert q.compression.name == "deflate" and q.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert q.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"  # GDAL reads it as a COG too
        assert np.array_equal(q.read(), result["array"])
        assert q.read(out_shape=(4, 144, 160)).shape == (4, 144, 160)  # served from an overview
    assert cog_errors(out) == []
    ifds, _, _ = directories(out)
    assert all(t[COMPRESSION] == (8,) and t[PREDICTOR] == (2,) for _, t in ifds)  # deflate, horizontal
    # the checker is not a rubber stamp: a tiled GeoTIFF whose overviews were added afterwards fails
    plain = tmp_path / "plain.tif"
    with rasterio.open(out) as q:
        profile = q.profile | {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256}
        data = q.read()
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        with rasterio.open(plain, "w", **profile) as dst:
            dst.write(data)
        with rasterio.open(plain, "r+") as dst:
            dst.build_overviews([2, 4])
    assert any("comes before" in e or "after image data" in e for e in cog_errors(plain))


def test_tags_scales_offsets_units_and_descriptions_come_back(rgbn_archive, tmp_path):
    source, url, report, out, _ = rgbn_archive
    with rasterio.open(out) as q, rasterio.open(source) as src:
        tags = q.tags()
        assert {k: tags[k] for k in TAGS} == TAGS and tags["TTFT_CODEC"].startswith("untrained-")
        assert tags["TTFT_PROFILE"] == "pixel" and "TTFT_LOSSY" in tags
        assert [q.tags(b) for b in q.indexes] == BAND_TAGS
        assert q.scales == SCALES and q.offsets == OFFSETS and q.units == UNITS
        assert q.descriptions == DESCRIPTIONS
        assert q.transform == src.transform and q.crs == src.crs  # pixel-is-point kept as the source's
    stored = Archive(url, create=False).item(report["id"])["source"]
    assert stored["tags"] == TAGS and stored["band_tags"] == BAND_TAGS
    assert stored["colorinterp"] == ["red", "green", "blue", "undefined"]
    # the bands a query returns carry their own metadata: bands 2 and 4 alone
    two = ingest_raster(str(source), str(tmp_path / "b.zarr"), tile=320, codec=CODEC, bands=[[2], [4]], ttft_steps=0)
    query_raster(str(tmp_path / "b.zarr"), two["id"], out=str(tmp_path / "two.tif"), bbox=None)
    with rasterio.open(tmp_path / "two.tif") as q:
        assert q.count == 2 and [q.tags(1), q.tags(2)] == [BAND_TAGS[1], BAND_TAGS[3]]
        assert q.scales == (SCALES[1], SCALES[3]) and q.offsets == (OFFSETS[1], OFFSETS[3])
        assert q.descriptions == (None, "nir") and [c.name for c in q.colorinterp] == ["green", "undefined"]


def test_a_fourth_band_stays_a_band_not_alpha(rgbn_archive):
    _, _, _, out, _ = rgbn_archive
    with rasterio.open(out) as q:
        assert [c.name for c in q.colorinterp] == ["red", "green", "blue", "undefined"]
        assert all(flags == [rasterio.enums.MaskFlags.all_valid] for flags in q.mask_flag_enums)
        assert q.dataset_mask().all()
    ifds, _, _ = directories(out)
    for _, tags in ifds:  # what a TIFF reader without GDAL sees: gray + three unspecified samples
        assert tags[PHOTOMETRIC] == (1,) and tags[EXTRA_SAMPLES] == (0, 0, 0)


def test_an_rgba_source_keeps_its_alpha_and_photometric_rgb(tmp_path):
    info = raster.RasterInfo("x", 8, 8, 4, "uint8", "EPSG:32618", (10, 0, 0, 0, -10, 80), None, (None,) * 4)
    rgba = replace(info, colorinterp=("red", "green", "blue", "alpha"))
    array = np.full((4, 8, 8), 7, np.uint8)
    raster.write_geotiff(tmp_path / "rgba.tif", array, rgba, rasterio.windows.Window(0, 0, 8, 8), {})
    with rasterio.open(tmp_path / "rgba.tif") as q:
        assert [c.name for c in q.colorinterp] == ["red", "green", "blue", "alpha"]
    [(_, tags)] = directories(tmp_path / "rgba.tif")[0]
    assert tags[PHOTOMETRIC] == (2,) and tags[EXTRA_SAMPLES] == (2,)  # RGB + unassociated alpha
    raster.write_geotiff(tmp_path / "old.tif", array, info, rasterio.windows.Window(0, 0, 8, 8), {})
    with rasterio.open(tmp_path / "old.tif") as q:  # an item stored without colours: gray, undefined
        assert [c.name for c in q.colorinterp] == ["gray", "undefined", "undefined", "undefined"]


def test_colour_interpretation_maps_bands_for_cross_band_tasks(rgbn_archive, tmp_path):
    source = rgbn_archive[0]
    report = ingest_raster(
        str(source), str(tmp_path / "n.zarr"), task="ndvi", tile=320, codec=CODEC, bands=[[1, 2, 3], [4]], ttft_steps=0
    )
    settings = Archive(str(tmp_path / "n.zarr"), create=False).profile(report["id"], "ndvi").settings
    assert settings["task_bands"] == {"red": 0, "green": 1, "blue": 2, "nir": 3}  # not blue, green, red
    mapping = raster.colour_band_mapping
    assert mapping(("blue", "green", "red", "undefined")) == {"red": 2, "green": 1, "blue": 0, "nir": 3}
    assert mapping(("red", "green", "blue")) == {"red": 0, "green": 1, "blue": 2}
    assert mapping(("gray", "undefined", "undefined", "undefined")) is None
    assert mapping(("red", "green", "blue", "alpha")) is None  # alpha: not a band of the scene
    assert mapping(("red", "red", "blue", "undefined")) is None and mapping(None) is None
    from ttft_archive.configs.settings import Settings

    groups, scales = [[1, 2, 3], [4]], [255.0] * 4
    # without a stated colour the default stays; names the user gives win over the colours
    default = cross_band_mapping("ndvi", Settings(), groups, scales, None)
    assert default == {"blue": 0, "green": 1, "red": 2, "nir": 3}
    named = Settings(raster={"band_names": {"red": 3, "green": 2, "blue": 1, "nir": 4}})
    assert cross_band_mapping("ndvi", named, groups, scales, mapping(("red", "green", "blue", "undefined"))) == {
        "red": 2,
        "green": 1,
        "blue": 0,
        "nir": 3,
    }


def test_an_item_stored_before_band_meaning_was_kept(tmp_path, monkeypatch):
    """An older item lacks tags and colours: a query writes GDAL's defaults, and ingesting again
    changes nothing."""
    source = str(SAMPLES / "landsat8_224078_rgb_crop256.tif")
    url = str(tmp_path / "a.zarr")
    real = raster.raster_info

    def old_info(path, storage_options=None):
        info = real(path, storage_options)
        return raster.RasterInfo(**{k: v for k, v in info.__dict__.items() if k not in raster.BAND_MEANING})

    monkeypatch.setattr(raster, "raster_info", old_info)
    report = ingest_raster(source, url, tile=128, codec=CODEC, ttft_steps=0)
    monkeypatch.undo()
    assert "colorinterp" not in Archive(url, create=False).item(report["id"])["source"]
    before = tree_digest(tmp_path / "a.zarr")
    again = ingest_raster(source, url, tile=128, codec=CODEC, ttft_steps=0)
    assert again["written_tiles"] == 0 and tree_digest(tmp_path / "a.zarr") == before
    query_raster(url, report["id"], out=str(tmp_path / "q.tif"))
    with rasterio.open(tmp_path / "q.tif") as q:
        assert [c.name for c in q.colorinterp] == ["gray", "undefined", "undefined"] and q.tags()["TTFT_PROFILE"]


def test_out_on_s3_and_bad_out_paths(rgbn_archive, tmp_path):
    import s3fs

    _, url, report, _, result = rgbn_archive
    with moto_s3() as (options, bucket):
        out = f"s3://{bucket}/queries/q.tif"
        query_raster(url, report["id"], out=out, storage_options=options)
        s3fs.S3FileSystem(**options).get(out, str(tmp_path / "back.tif"))
        with rasterio.open(tmp_path / "back.tif") as q:
            assert np.array_equal(q.read(), result["array"]) and q.overviews(1) == [2, 4]
        assert cog_errors(tmp_path / "back.tif") == []
        with pytest.raises(TTFTError, match="upload failed"):
            query_raster(url, report["id"], out="s3://no-such-bucket-here/q.tif", storage_options=options)
        # the command line: the same upload, with the options from the environment
        env = {**os.environ, "TTFT_STORAGE_OPTIONS": json.dumps(options)}
        cli = [sys.executable, "-m", "ttft_archive.flows.cli"]
        run = subprocess.run(
            cli + ["query", "--archive", url, "--item", report["id"], "--out", f"s3://{bucket}/cli/q.tif"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
            env=env,
        )
        assert run.returncode == 0, run.stderr
        assert s3fs.S3FileSystem(**options).exists(f"{bucket}/cli/q.tif")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(TTFTError, match="a-file is a file, not a folder"):  # refused before decoding
        query_raster(url, report["id"], out=str(blocker / "q.tif"))
    with pytest.raises(TTFTError, match="is a folder"):
        query_raster(url, report["id"], out=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "back.tif"]  # no temporary left


def test_ls_names_each_band(rgbn_archive):
    _, url, report, _, _ = rgbn_archive
    cli = [sys.executable, "-m", "ttft_archive.flows.cli", "ls", "--archive", url]
    run = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    # the description where there is one, else the colour interpretation
    assert "bands: 1 red, 2 green, 3 blue, 4 nir" in run.stdout
    assert f"complete  {report['codec']}" in run.stdout  # each profile names the codecs it codes with
    described = raster.describe(Archive(url, create=False).item(report["id"])["source"])
    assert described["colorinterp"] == {"1": "red", "2": "green", "3": "blue", "4": "undefined"}
    assert raster.band_label("nir", "alpha") == "nir (alpha)" and raster.band_label("B1", "gray") == "B1"


def test_a_dicom_series_out_on_s3(tmp_path):
    import pydicom
    import s3fs

    from ttft_archive.flows.jobs.dicom import ingest_dicom, query_dicom

    url = str(tmp_path / "a.zarr")
    [report] = ingest_dicom([str(SAMPLES / "ct_3slice_01.dcm")], url, codec=CODEC, tile=256, ttft_steps=0)
    with moto_s3() as (options, bucket):
        result = query_dicom(url, report["id"], out=f"s3://{bucket}/series/", storage_options=options)
        assert result["files"] == [f"s3://{bucket}/series/0001.dcm"]
        fs = s3fs.S3FileSystem(**options)
        fs.get(result["files"][0], str(tmp_path / "0001.dcm"))
        derived = pydicom.dcmread(tmp_path / "0001.dcm")
        assert derived.pixel_array.shape == (512, 512) and "DERIVED" in derived.ImageType


def test_a_query_reads_the_items_attributes_once(rgbn_archive, tmp_path, monkeypatch):
    """Each read is a request on S3: a query opens the archive once and asks for the item once."""
    from ttft_archive.flows.jobs.query import query_item

    _, url, report, _, result = rgbn_archive
    reads, checked = [], Archive._checked_item
    monkeypatch.setattr(Archive, "_checked_item", lambda self, item: reads.append(item) or checked(self, item))
    again = query_item(url, report["id"], str(tmp_path / "q.tif"))
    assert reads == [report["id"]] and again["shape"] == result["shape"]
