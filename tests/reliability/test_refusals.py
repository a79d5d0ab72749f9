"""Refusals before work: each bad input, option or output is refused through the command line in
one `ttft: error: ...` line naming it, exit status 2, no traceback, and the archive is left as it
was: absent when it did not exist, byte for byte the same when it did."""

from __future__ import annotations

import struct

import numpy as np
import pydicom
import pytest
import rasterio
from pydicom.uid import generate_uid

from ttft_archive.adapters.archive import Archive
from ttft_archive.configs.settings import MAX_TILE, MIN_TILE
from ttft_archive.ttft_core.backbones import PRESETS, SPATIAL_MULTIPLE, BackboneConfig, build

from ..conftest import SAMPLES
from .common import CODEC, FAST, cli, crop_raster, tree

RGBN = SAMPLES / "rgbn_4band_20160517_crop192.tif"
CT = SAMPLES / "ct_3slice_01.dcm"
ITEM = "scene"


def huge_tiff(path, width: int = 1_000_000, height: int = 1_000_000):
    """150 bytes of classic TIFF whose header declares ``width`` x ``height`` 8-bit pixels in one
    deflated strip: a reader learns the size without reading a pixel."""
    entries = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),  # bits per sample
        (259, 3, 8),  # deflate
        (262, 3, 1),  # black is zero
        (273, 4, 8 + 2 + 12 * 10 + 4),  # the strip follows the IFD
        (277, 3, 1),  # samples per pixel
        (278, 4, height),  # rows per strip: one strip
        (279, 4, 16),  # strip byte count
        (284, 3, 1),  # planar configuration: contiguous
    ]
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in entries:
        out += struct.pack("<HHI", tag, kind, 1) + struct.pack(
            "<HH" if kind == 3 else "<I", *((value, 0) if kind == 3 else (value,))
        )
    path.write_bytes(out + struct.pack("<I", 0) + bytes(16))
    return path


def write_raster(path, data: np.ndarray, dtype: str, **extra):
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0]}
    with rasterio.open(path, "w", dtype=dtype, **profile, **extra) as dst:
        dst.write(data.astype(dtype))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every bad source, made once."""
    d = tmp_path_factory.mktemp("inputs")
    ok = crop_raster(d / "scene.tif")
    (d / "empty.tif").write_bytes(b"")
    (d / "text.tif").write_text("band,row,col,value\n1,0,0,17\n" * 20)
    strips = write_raster(d / "strips.tif", np.arange(3 * 200 * 200).reshape(3, 200, 200) % 251, "uint8")
    (d / "truncated.tif").write_bytes(strips.read_bytes()[: strips.stat().st_size // 2])
    floats = np.ones((1, 64, 64), np.float32)
    floats[0, 3, 3], floats[0, 4, 4] = np.nan, np.inf
    write_raster(d / "nan.tif", floats, "float32")
    write_raster(d / "float64.tif", np.ones((1, 64, 64)), "float64")
    write_raster(d / "complex.tif", np.ones((1, 64, 64)), "complex64")
    huge_tiff(d / "huge.tif")
    series = d / "series"
    series.mkdir()
    for n in range(2):  # two slices of one series, 64 x 64 crops of the bundled CT slice
        ds = pydicom.dcmread(CT)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[224:288, 224:288]).tobytes()
        ds.Rows = ds.Columns = 64
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), n + 1
        ds.ImagePositionPatient = [0, 0, float(n)]
        ds.save_as(series / f"{n}.dcm")
    return d, ok


@pytest.fixture(scope="module")
def archive(tmp_path_factory, inputs):
    """An archive holding one complete item, made once; every refusal must leave it unchanged."""
    url = tmp_path_factory.mktemp("archive") / "a.zarr"
    code, _, err = cli("ingest", inputs[1], "--archive", url, *FAST)
    assert code == 0, err
    return url


def refused(code: int, err: str, *names: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ttft: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


BAD_SOURCES = [  # (file, extra options, what the line must say)
    ("empty.tif", (), "not a readable raster"),
    ("text.tif", (), "not a readable raster"),
    ("truncated.tif", (), "truncated or damaged"),
    ("nan.tif", (), "band data type float32 is not supported"),
    ("float64.tif", (), "band data type float64 is not supported"),
    ("complex.tif", (), "band data type complex64 is not supported"),
    ("huge.tif", (), "1000000 x 1000000 pixels exceed limits.max_pixels"),
    ("missing.tif", (), "No such file"),
    ("scene.tif", ("--task", "no-such-task"), "unknown task 'no-such-task'"),
    ("scene.tif", ("--task", "ndvi"), "task 'ndvi' needs bands"),
    ("scene.tif", ("--codec", "no-such-codec"), "unknown codec 'no-such-codec'"),
    ("scene.tif", ("--bands", "1,2"), "band groups"),
    ("scene.tif", ("--bands", "1,2,9"), "between 1 and 3"),
    ("scene.tif", ("--tile", "0"), "0 is not a tile side"),
    ("scene.tif", ("--tile", "7"), "7 is not a tile side"),
    ("scene.tif", ("--tile", "-64"), "-64 is not a tile side"),
    ("scene.tif", ("--tile", str(MAX_TILE + SPATIAL_MULTIPLE)), "is not a tile side"),
    ("scene.tif", ("--ttft-steps", "-1"), "ingest option ttft_steps"),
    ("scene.tif", ("--quality", "0.5"), "ingest option quality"),
    ("scene.tif", ("--quality", "2"), "quality 2: family 'rgb' (hyperprior) has qualities 0, 1, 3"),
]


@pytest.mark.parametrize("source, extra, says", BAD_SOURCES, ids=[f"{s}{''.join(e)}" for s, e, _ in BAD_SOURCES])
def test_a_bad_source_or_option_is_refused_before_the_archive_changes(tmp_path, inputs, archive, source, extra, says):
    d, _ = inputs
    before = tree(archive)
    fresh = tmp_path / "new.zarr"
    for url in (archive, fresh):
        code, _, err = cli("ingest", d / source, "--archive", url, *FAST, *extra)
        line = refused(code, err, says)
        if not source.startswith("scene"):
            assert source in line  # names the input
    assert tree(archive) == before and tree(fresh) is None


def test_a_band_count_the_codec_cannot_take_is_refused(tmp_path, archive):
    before = tree(archive)
    code, _, err = cli("ingest", RGBN, "--archive", archive, "--codec", "rgb-hyperprior-q1", "--ttft-steps", "0")
    refused(code, err, "4 bands cannot be split into groups of 3")
    assert tree(archive) == before


@pytest.mark.parametrize(
    "limit, value, source, says",
    [
        ("MAX_BANDS", "3", RGBN, "4 bands exceed limits.max_bands (3)"),
        ("MAX_PIXELS", "10000", RGBN, "192 x 192 pixels exceed limits.max_pixels"),
        ("MAX_SAMPLES", "100000", RGBN, "192 x 192 x 4 samples exceed limits.max_samples"),
        ("MAX_PIXELS", "1000", "series", "slices of 64 x 64 pixels exceed limits.max_pixels"),
        ("MAX_SLICES", "1", "series", "2 slices exceed limits.max_slices (1)"),
        ("MAX_SAMPLES", "5000", "series", "2 x 64 x 64 samples exceed limits.max_samples"),
    ],
)
def test_size_limits_come_from_the_settings_and_the_header(monkeypatch, inputs, archive, limit, value, source, says):
    """The limits are settings (TTFT_LIMITS__*): the header is checked before any pixel is read."""
    source = inputs[0] / "series" if source == "series" else source
    monkeypatch.setenv(f"TTFT_LIMITS__{limit}", value)
    monkeypatch.setattr(rasterio.io.DatasetReader, "read", _no_pixel_reads)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(_no_pixel_reads))
    before = tree(archive)
    code, _, err = cli("ingest", source, "--archive", archive, "--ttft-steps", "0")
    refused(code, err, says, str(source))
    assert tree(archive) == before


def _no_pixel_reads(*args, **kwargs):
    raise AssertionError("a pixel was read before the size limits were checked")


def test_the_tile_rule_fits_the_codecs_stride():
    """Every backbone downsamples by SPATIAL_MULTIPLE in all (g_a by 16, h_a by 4 more): tiles are
    padded to a multiple of it by edge replication, so any side the options accept codes, and the
    largest accepted side needs no padding."""
    assert MAX_TILE % SPATIAL_MULTIPLE == 0 and MIN_TILE <= SPATIAL_MULTIPLE
    for name, spec in PRESETS.items():
        small = {"N": 16, "M": 24} | ({"depths": (1, 1, 1), "heads": (2, 2, 2), "window": 4} if "tic" in name else {})
        model = build(BackboneConfig(spec["backbone"], 1, **small)).eval()
        import torch

        with torch.no_grad():
            y = model.g_a(torch.zeros(1, 1, SPATIAL_MULTIPLE, 2 * SPATIAL_MULTIPLE))
            z = model.h_a(y)
        assert tuple(z.shape[-2:]) == (1, 2), name


def test_a_tile_side_off_the_stride_is_padded_and_queries_back_whole(tmp_path, inputs):
    """The documented choice: a tile side that is not a multiple of 64 is padded (and cropped),
    not refused; 100 px tiles of a 128 crop query back to the crop's shape."""
    url, out = tmp_path / "a.zarr", tmp_path / "q.tif"
    code, _, err = cli("ingest", inputs[1], "--archive", url, "--codec", CODEC, "--ttft-steps", "0", "--tile", "100")
    assert code == 0, err
    code, _, err = cli("query", "--archive", url, "--item", ITEM, "--out", out)
    assert code == 0, err
    with rasterio.open(out) as q, rasterio.open(inputs[1]) as src:
        assert (q.count, q.height, q.width) == (src.count, src.height, src.width)


@pytest.mark.parametrize(
    "args, says",
    [
        (("query", "--item", "nope", "--out", "{tmp}/q.tif"), "no item 'nope'"),
        (("query", "--item", "../x", "--out", "{tmp}/q.tif"), "no item '../x'"),
        (("query", "--item", "../../../etc", "--out", "{tmp}/q.tif"), "no item '../../../etc'"),
        (("query", "--item", "/etc/passwd", "--out", "{tmp}/q.tif"), "no item '/etc/passwd'"),
        (("query", "--item", ITEM, "--task", "../../x", "--out", "{tmp}/q.tif"), "profile name '../../x'"),
        (("query", "--item", ITEM, "--task", "/abs", "--out", "{tmp}/q.tif"), "profile name '/abs'"),
        (("query", "--item", ITEM, "--task", "edges", "--out", "{tmp}/q.tif"), "has no profile 'edges'"),
        (("query", "--item", ITEM, "--out", "{tmp}"), "is a folder"),
        # a missing folder is made (tests/test_query_outputs.py); one under a file cannot be
        (("query", "--item", ITEM, "--out", "{tmp}/a-file/q.tif"), "{tmp}/a-file is a file, not a folder"),
    ],
)
def test_bad_items_tasks_and_outputs_are_refused_before_decoding(tmp_path, archive, monkeypatch, args, says):
    from ttft_archive.flows.jobs import tiles

    monkeypatch.setattr(tiles, "decoders_for", _no_pixel_reads)  # refused before any tile is decoded
    (tmp_path / "a-file").write_text("not a folder")
    before = tree(archive)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = cli(*args, "--archive", archive)
    refused(code, err, says.replace("{tmp}", str(tmp_path)))
    assert tree(archive) == before and not (tmp_path / "q.tif").exists()


def test_a_dicom_output_that_cannot_be_a_folder_is_refused(tmp_path, inputs):
    url = tmp_path / "a.zarr"
    code, _, err = cli("ingest", inputs[0] / "series", "--archive", url, *FAST)
    assert code == 0, err
    item = Archive(str(url)).item_ids()[0]
    before = tree(url)
    (tmp_path / "a-file").write_text("not a folder")
    for out, says in ((tmp_path / "a-file", "is a file"), (tmp_path / "a-file" / "series", "is a file, not a folder")):
        code, _, err = cli("query", "--archive", url, "--item", item, "--out", out)
        refused(code, err, str(out), says)
    assert tree(url) == before


def test_verify_of_an_escaping_item_names_it_and_reads_nothing_else(archive):
    before = tree(archive)
    for item in ("../x", "/etc/passwd", "a/../../b"):
        code, out, err = cli("verify", "--archive", archive, "--item", item)
        assert code == 1 and err.strip() == f"{archive}: no item {item!r}" and not out
    assert tree(archive) == before


def test_listing_a_missing_archive_creates_nothing(tmp_path):
    for command in (("ls",), ("verify",), ("query", "--item", "x", "--out", tmp_path / "q.tif")):
        code, _, err = cli(*command, "--archive", tmp_path / "none.zarr")
        refused(code, err, "no archive there")
    assert tree(tmp_path / "none.zarr") is None
