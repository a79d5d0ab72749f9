import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from ttft_archive.adapters import raster
from ttft_archive.adapters.archive import Archive
from ttft_archive.flows.jobs.raster import ingest_raster, query_raster
from ttft_archive.flows.jobs.tiles import verify
from ttft_archive.ttft_core import TTFTError, bitstream

from .conftest import ROOT, SAMPLES
from .s3_server import moto_s3
from .test_archive import entry_middle, shard_file, tree_digest

LANDSAT = SAMPLES / "landsat8_224078_rgb_crop256.tif"
CODEC = "hyperprior-small"


def test_bbox_query_returns_the_source_window_geometry(tmp_path):
    url = str(tmp_path / "a.zarr")
    report = ingest_raster(str(LANDSAT), url, tile=96, codec=CODEC, ttft_steps=0)
    assert report["complete"] and report["tiles"] == 9 and report["bytes"] > 0
    with rasterio.open(LANDSAT) as src:
        b = src.bounds
        bbox = (b.left + 310, b.bottom + 290, b.left + 3020, b.bottom + 4010)
        expected = from_bounds(*bbox, src.transform).round_offsets().round_lengths()
        exp_transform = src.window_transform(expected)
        crs, dtype, count = src.crs, src.dtypes[0], src.count
    out = tmp_path / "q.tif"
    result = query_raster(url, report["id"], bbox=bbox, out=str(out))
    with rasterio.open(out) as q:
        assert q.crs == crs and q.dtypes[0] == dtype and q.count == count
        assert q.transform.almost_equals(exp_transform)
        assert abs(q.width - expected.width) <= 1 and abs(q.height - expected.height) <= 1
        assert q.tags()["TTFT_CODEC"] == f"untrained-{CODEC}-c3"
        assert np.array_equal(q.read(), result["array"])
    # only the tiles under the window were decoded: rows 1-2 of 0-2, columns 0-1 of 0-2
    assert sorted(result["tiles_read"]) == [(0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1)]


def test_a_window_of_few_tiles_reads_their_entries_not_their_shard(tmp_path, monkeypatch):
    """64 tiles of 32 px in one shard: a window over one tile fetches the shard's header and that
    tile's entry (byte ranges), a fraction of the shard, and decodes as a whole-shard read does; a
    damaged entry fetched alone is refused naming its tile."""
    from ttft_archive.adapters import archive_store

    url = tmp_path / "a.zarr"
    report = ingest_raster(str(LANDSAT), str(url), tile=32, codec=CODEC, ttft_steps=0)
    assert report["tiles"] == 64 and len(list(url.rglob("shards/c/*/*/*"))) == 1
    shard = shard_file(url, report["id"])
    with rasterio.open(LANDSAT) as src:
        b, res = src.bounds, src.res[0]
        bbox = (b.left + 40 * res, b.top - 60 * res, b.left + 60 * res, b.top - 40 * res)  # inside tile (0, 1, 1)
    fetched, get = [], archive_store._ArchiveStore.get

    async def spy(self, key, prototype, byte_range=None):
        found = await get(self, key, prototype, byte_range)
        if "/shards/c/" in key:
            fetched.append((byte_range, 0 if found is None else len(found)))
        return found

    monkeypatch.setattr(archive_store._ArchiveStore, "get", spy)
    ranged = query_raster(str(url), report["id"], bbox=bbox)
    assert ranged["tiles_read"] == [(0, 1, 1)] and all(r is not None for r, _ in fetched) and len(fetched) == 2
    assert sum(n for _, n in fetched) < shard.stat().st_size / 8
    whole = query_raster(str(url), report["id"])  # every tile: the shard in one read
    assert fetched[-1][0] is None and len(fetched) == 3
    rows, cols = ranged["window"][1], ranged["window"][0]
    h, w = ranged["array"].shape[1:]
    assert np.array_equal(ranged["array"], whole["array"][:, rows : rows + h, cols : cols + w])

    raw = bytearray(shard.read_bytes())
    raw[8 + entry_middle(bytes(raw[8:]), 9)] ^= 0x04  # the entry of tile (0, 1, 1)
    shard.write_bytes(bytes(raw))
    with pytest.raises(TTFTError, match=r"tile .*/pixel\[0, 1, 1\]: tile shard entry checksum"):
        query_raster(str(url), report["id"], bbox=bbox)


def test_bbox_in_lon_lat(tmp_path):
    url = str(tmp_path / "a.zarr")
    report = ingest_raster(str(LANDSAT), url, tile=128, codec=CODEC, ttft_steps=0)
    with rasterio.open(LANDSAT) as src:
        from rasterio.warp import transform_bounds

        lonlat = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    result = query_raster(url, report["id"], bbox=lonlat, crs="EPSG:4326")
    assert result["shape"] == [3, 256, 256]
    with pytest.raises(TTFTError, match="does not intersect"):
        query_raster(url, report["id"], bbox=(0.0, 0.0, 1.0, 1.0), crs="EPSG:4326")


def test_reingest_changes_no_byte_and_an_interrupted_ingest_completes(tmp_path):
    url = str(tmp_path / "a.zarr")
    stopped_at = []

    def stop_after_the_first_batch(done, total):  # 96-px tiles go 7 to a batch: progress moves 7, 9
        stopped_at.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_raster(str(LANDSAT), url, tile=96, codec=CODEC, progress=stop_after_the_first_batch, ttft_steps=0)
    left = 9 - stopped_at[0]
    archive = Archive(url)
    profile = archive.profile("landsat8_224078_rgb_crop256", "pixel")
    assert 0 < left < 9 and not profile.complete and len(profile.missing()) == left
    assert verify(url) == [f"{url}: profile landsat8_224078_rgb_crop256/pixel: incomplete ({left} tiles missing)"]
    report = ingest_raster(str(LANDSAT), url, tile=96, codec=CODEC, ttft_steps=0)
    assert report["complete"] and report["written_tiles"] == left and report["coded_tiles"] == 9
    assert verify(url) == []
    before = tree_digest(tmp_path / "a.zarr")
    again = ingest_raster(str(LANDSAT), url, tile=96, codec=CODEC, ttft_steps=0)
    assert again["written_tiles"] == 0 and tree_digest(tmp_path / "a.zarr") == before


def test_verify_names_a_corrupted_chunk_through_the_cli(tmp_path):
    url = tmp_path / "a.zarr"
    ingest_raster(str(LANDSAT), str(url), tile=128, codec=CODEC, ttft_steps=0)
    shard = shard_file(url, "landsat8_224078_rgb_crop256")
    raw = bytearray(shard.read_bytes())
    raw[8 + entry_middle(bytes(raw[8:]), 3)] ^= 0x10  # inside the entry of tile (0, 1, 1), after a vlen prefix
    shard.write_bytes(bytes(raw))
    run = subprocess.run(
        [sys.executable, "-m", "ttft_archive.flows.cli", "verify", "--archive", str(url)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 1
    assert "landsat8_224078_rgb_crop256/pixel[0, 1, 1]" in run.stderr and "Traceback" not in run.stderr


def test_nodata_tiles_are_recorded_not_coded(tmp_path, shared_data):
    url = str(tmp_path / "a.zarr")
    report = ingest_raster(
        str(shared_data / "satellite" / "rgb_byte_nodata0.tif"), url, tile=128, codec=CODEC, ttft_steps=0
    )
    assert report["empty_tiles"] > 0 and report["coded_tiles"] + report["empty_tiles"] == report["tiles"]
    result = query_raster(url, report["id"], bbox=None)
    assert result["shape"] == [3, 718, 791] and len(result["tiles_read"]) == report["tiles"]
    with rasterio.open(shared_data / "satellite" / "rgb_byte_nodata0.tif") as src:
        source = src.read()
    # nodata comes back exactly where it was, inside coded tiles too; elsewhere values are decoded
    assert np.array_equal(result["array"] == 0, source == 0)


def test_ingest_and_query_on_s3(tmp_path):
    import s3fs

    with moto_s3() as (options, bucket):
        url = f"s3://{bucket}/a.zarr"
        source = f"s3://{bucket}/scenes/landsat8_224078_rgb_crop256.tif"
        s3fs.S3FileSystem(**options).put(str(LANDSAT), source)
        report = ingest_raster(source, url, tile=128, codec=CODEC, storage_options=options, ttft_steps=0)
        assert report["complete"]
        result = query_raster(url, report["id"], out=str(tmp_path / "q.tif"), storage_options=options)
        assert result["shape"] == [3, 256, 256] and verify(url, storage_options=options) == []
        local = ingest_raster(str(LANDSAT), str(tmp_path / "local.zarr"), tile=128, codec=CODEC, ttft_steps=0)
        assert local["bytes"] == report["bytes"]  # the same pixels, wherever they were read from
        # a window of one of 16 tiles: its entry fetched by byte ranges from the S3 object
        small = f"s3://{bucket}/small.zarr"
        ingest_raster(source, small, tile=64, codec=CODEC, storage_options=options, ttft_steps=0)
        ingest_raster(str(LANDSAT), str(tmp_path / "small.zarr"), tile=64, codec=CODEC, ttft_steps=0)
        with rasterio.open(LANDSAT) as src:
            b, res = src.bounds, src.res[0]
            bbox = (b.left + 70 * res, b.top - 120 * res, b.left + 120 * res, b.top - 70 * res)  # in tile (0, 1, 1)
        window = query_raster(small, report["id"], bbox=bbox, storage_options=options)
        assert window["tiles_read"] == [(0, 1, 1)]
        assert np.array_equal(
            window["array"], query_raster(str(tmp_path / "small.zarr"), report["id"], bbox=bbox)["array"]
        )
        env = {"TTFT_STORAGE_OPTIONS": json.dumps(options)}
        import os

        run = subprocess.run(
            [sys.executable, "-m", "ttft_archive.flows.cli", "ls", "--archive", url, "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
            env={**os.environ, **env},
        )
        assert run.returncode == 0, run.stderr
        items = json.loads(run.stdout)["items"]
        assert items[0]["id"] == report["id"] and items[0]["profiles"][0]["complete"] is True


def test_bad_inputs_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(TTFTError, match="bad.tif"):
        ingest_raster(str(bad), str(tmp_path / "a.zarr"), ttft_steps=0)
    with pytest.raises(TTFTError, match="needs bands nir"):
        ingest_raster(str(LANDSAT), str(tmp_path / "a.zarr"), task="ndvi", codec=CODEC, ttft_steps=0)
    with pytest.raises(TTFTError, match="no archive there"):
        query_raster(str(tmp_path / "missing.zarr"), "x")
    assert not (tmp_path / "missing.zarr").exists()


def test_an_ingest_killed_mid_run_completes_on_the_next_run(tmp_path):
    import os
    import signal
    import time

    url = tmp_path / "a.zarr"
    keys = url / "items" / "landsat8_224078_rgb_crop256" / "profiles" / "pixel" / "tiles" / "c"
    cmd = [
        sys.executable,
        "-m",
        "ttft_archive.flows.cli",
        "ingest",
        str(LANDSAT),
        "--archive",
        str(url),
        "--tile",
        "32",
        "--codec",
        CODEC,
        "--ttft-steps",
        "0",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if keys.exists() and sum(1 for p in keys.rglob("*") if p.is_file()) >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    profile = Archive(str(url)).profile("landsat8_224078_rgb_crop256", "pixel")
    assert not profile.complete and 0 < len(profile.missing()) < 64
    run = subprocess.run(cmd + ["--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    [report] = json.loads(run.stdout)
    assert report["complete"] and report["coded_tiles"] == 64 and report["written_tiles"] < 64
    assert verify(str(url)) == []
    profile = Archive(str(url)).profile("landsat8_224078_rgb_crop256", "pixel")
    figures = profile.figures()
    for index in profile.indices():  # every tile there once, its recorded size its stored size
        assert figures["nbytes"][index] == len(profile.read_tile(index))


def test_an_internal_mask_band_comes_back_as_a_mask(tmp_path):
    src_path = tmp_path / "masked.tif"
    with rasterio.open(LANDSAT) as src:
        data, profile = src.read(), src.profile
    mask = np.full(data.shape[1:], 255, np.uint8)
    mask[:100, :150] = 0  # a masked corner, across tile edges
    mask[200:, 200:] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(src_path, "w", **profile) as dst:
            dst.write(data)
            dst.write_mask(mask)
    url = str(tmp_path / "a.zarr")
    report = ingest_raster(str(src_path), url, tile=64, codec=CODEC, ttft_steps=0)
    assert report["empty_tiles"] == 2  # the two tiles wholly inside the corner
    out = tmp_path / "q.tif"
    result = query_raster(url, report["id"], out=str(out))
    with rasterio.open(out) as q:
        assert np.array_equal(q.dataset_mask(), mask)
    assert np.array_equal(result["valid"].all(axis=0), mask > 0)


def test_band_groups_by_config_mix_rgb_and_single_band_codecs(tmp_path):
    rgbn = SAMPLES / "rgbn_4band_20160517_crop192.tif"
    url = str(tmp_path / "a.zarr")
    report = ingest_raster(str(rgbn), url, tile=96, codec=CODEC, bands=[[1, 2, 3], [4]], ttft_steps=0)
    assert report["tiles"] == 2 * 2 * 2 and report["codec"] == f"untrained-{CODEC}-c1+untrained-{CODEC}-c3"
    query_raster(url, report["id"], out=str(tmp_path / "q.tif"))
    with rasterio.open(tmp_path / "q.tif") as q, rasterio.open(rgbn) as src:
        assert q.count == 4 and q.descriptions == src.descriptions and q.transform == src.transform
    nir_only = ingest_raster(str(rgbn), str(tmp_path / "b.zarr"), tile=96, codec=CODEC, bands=[[4]], ttft_steps=0)
    assert query_raster(str(tmp_path / "b.zarr"), nir_only["id"])["shape"] == [1, 192, 192]
    for bad in ([[1, 2]], [[1, 2, 5]], [[1], [1]]):
        with pytest.raises(TTFTError, match="band groups"):
            ingest_raster(str(rgbn), str(tmp_path / "c.zarr"), codec=CODEC, bands=bad, ttft_steps=0)


RGBN = SAMPLES / "rgbn_4band_20160517_crop192.tif"  # red, green, blue, NIR
RGBN_NAMES = {"red": 1, "green": 2, "blue": 3, "nir": 4}


def test_a_cross_band_task_tunes_each_band_group_on_the_whole_index(tmp_path):
    """NDVI needs red (in the RGB group) and NIR (coded alone): each group is tuned and judged
    with the other bands in place, and the profile records the band mapping it used."""
    url = str(tmp_path / "a.zarr")
    report = ingest_raster(
        str(RGBN), url, task="ndvi", bands=[[1, 2, 3], [4]], band_names=RGBN_NAMES, ttft_steps=2, tile=192
    )
    profile = Archive(url, create=False).profile(report["id"], "ndvi")
    assert profile.settings["task_bands"] == {"red": 0, "green": 1, "blue": 2, "nir": 3}
    assert report["coded_tiles"] == 2 and report["ttft_steps"] > 0  # the RGB group and the NIR band
    assert 0 < report["fidelity_mean"] < 0.2  # NDVI mean absolute error, index units in [-1, 1]
    assert query_raster(url, report["id"], task="ndvi")["shape"] == [4, 192, 192]
    with pytest.raises(TTFTError, match="needs bands nir"):
        ingest_raster(
            str(RGBN), str(tmp_path / "b.zarr"), task="ndvi", bands=[[1, 2, 3]], band_names=RGBN_NAMES, ttft_steps=0
        )


def test_within_bands_passes_the_gradient_to_the_coded_group_only():
    import torch

    from ttft_archive.ttft_core.band_context import within_bands
    from ttft_archive.ttft_core.tasks import get_task

    context = torch.rand(4, 16, 16) * 0.5 + 0.25
    task = within_bands(get_task("ndvi", bands={"red": 0, "nir": 3}), context, [3])
    nir = context[3:].clone().requires_grad_(True)
    assert task.loss(nir, context[3:]).item() == 0.0
    moved = nir * 0.9
    loss = task.loss(moved, context[3:])
    loss.backward()
    assert loss.item() > 0 and nir.grad.abs().sum() > 0
    assert task.metric(context[3:], context[3:]) == 0.0


def test_a_zero_adapter_of_another_rank_decodes(tmp_path, monkeypatch):
    """The decoder rebuilds the zero adapter from the rank and alpha the profile recorded."""
    monkeypatch.setenv("TTFT_LORA__RANK", "2")
    monkeypatch.setenv("TTFT_LORA__ALPHA", "3.0")
    url = str(tmp_path / "a.zarr")
    report = ingest_raster(str(LANDSAT), url, task="pixel", codec=CODEC, tile=128, ttft_steps=1)
    monkeypatch.delenv("TTFT_LORA__RANK")
    monkeypatch.delenv("TTFT_LORA__ALPHA")
    [coder] = Archive(url, create=False).profile(report["id"], "pixel").settings["coders"].values()
    assert coder["lora"] == {"rank": 2, "alpha": 3.0}
    assert query_raster(url, report["id"])["shape"] == [3, 256, 256]


def test_a_cross_band_task_batches_each_tile_with_its_own_bands(tmp_path, monkeypatch):
    """ndvi over an RGB group and a NIR band, 64-px tiles: nine tiles of each group tuned in one
    batch, each for NDVI over its own window's bands, code as when tuned one by one."""
    rgbn = str(SAMPLES / "rgbn_4band_20160517_crop192.tif")
    options = dict(
        tile=64,
        codec="rgb-hyperprior-q1",
        task="ndvi",
        ttft_steps=2,
        bands=[[1, 2, 3], [4]],
        band_names={"blue": 1, "green": 2, "red": 3, "nir": 4},
    )
    batched = ingest_raster(rgbn, str(tmp_path / "b.zarr"), **options)
    monkeypatch.setenv("TTFT_TTFT__BATCH_PIXELS", "0")
    alone = ingest_raster(rgbn, str(tmp_path / "a.zarr"), **options)
    assert batched["coded_tiles"] == alone["coded_tiles"] == 18 and batched["ttft_steps"] == alone["ttft_steps"]
    a, b = (Archive(str(tmp_path / n), create=False).profile(batched["id"], "ndvi") for n in ("a.zarr", "b.zarr"))
    sizes = [(len(a.read_tile(i)), len(b.read_tile(i))) for i in a.indices()]
    assert all(abs(x - y) <= 0.02 * x for x, y in sizes), sizes
    fa, fb = a.figures()["fidelity"], b.figures()["fidelity"]
    assert np.allclose(fa, fb, atol=1e-3), (fa, fb)


def test_a_raster_is_tiled_by_512_unless_asked(tmp_path):
    path = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 640, "height": 576, "count": 3, "dtype": "uint8"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.random.default_rng(0).integers(0, 256, (3, 576, 640), dtype=np.uint8))
    report = ingest_raster(str(path), str(tmp_path / "a.zarr"), codec=CODEC, ttft_steps=0)
    assert report["tiles"] == 4  # 2 x 2 tiles of 512
    report = ingest_raster(str(path), str(tmp_path / "b.zarr"), codec=CODEC, tile=256, ttft_steps=0)
    assert report["tiles"] == 9


def test_an_rgb_tile_is_coded_in_its_own_value_window_unless_asked(tmp_path):
    """The rgb family stretches each tile's own range to [0, 1] (a Landsat crop mapped by its
    maximum fills a third of it); `window: item` keeps the item's mapping, the bytes of before."""
    item = "landsat8_224078_rgb_crop256"
    source = raster.read_window(LANDSAT).astype(np.float64)
    decoded, nbytes = {}, {}
    for window in ("tile", "item"):
        url = str(tmp_path / f"{window}.zarr")
        options = {"window": "item"} if window == "item" else {}
        report = ingest_raster(str(LANDSAT), url, codec="rgb-hyperprior-q1", tile=128, ttft_steps=0, **options)
        profile = Archive(url).profile(item, "pixel")
        assert profile.settings["coders"]["3"].get("window") == ("tile" if window == "tile" else None)
        headers = [bitstream.unpack(profile.read_tile(i)).header for i in profile.indices()]
        assert len(headers) == 4 and all((h.window is not None) == (window == "tile") for h in headers)
        out = tmp_path / f"{window}.tif"
        query_raster(url, report["id"], out=str(out))
        decoded[window], nbytes[window] = raster.read_window(out).astype(np.float64), report["bytes"]
    # an ingest made without windows (as every one before them) is resumed or re-run as it was coded
    again = ingest_raster(str(LANDSAT), str(tmp_path / "item.zarr"), codec="rgb-hyperprior-q1", ttft_steps=0)
    assert again["complete"] and again["written_tiles"] == 0
    errors = {w: np.sqrt(np.mean((d - source) ** 2)) for w, d in decoded.items()}
    # the window spends the codec's range on the tile's own values: more bytes, a closer decoding
    assert nbytes["tile"] > nbytes["item"] and errors["tile"] < 0.8 * errors["item"]
    # tuning runs in the window as well
    tuned = ingest_raster(str(LANDSAT), str(tmp_path / "tuned.zarr"), codec="rgb-hyperprior-q1", ttft_steps=2)
    profile = Archive(str(tmp_path / "tuned.zarr")).profile(item, "pixel")
    assert tuned["complete"] and bitstream.unpack(profile.read_tile((0, 0, 0))).header.window is not None


def test_a_collar_is_coded_as_a_fill_of_the_scene_and_comes_back_as_nodata(tmp_path):
    """A nodata collar in a tile: the codec sees a continuation of the scene, the tile's value
    window spans the valid pixels only, tuning judges them only, and the collar decodes as
    nodata."""
    with rasterio.open(LANDSAT) as src:
        profile, values = src.profile, np.maximum(src.read(), 1)
    rows, cols = np.indices(values.shape[1:])
    collar = rows + cols < 100  # a corner of tile (0, 0) at tiles of 128
    values[:, collar] = 0
    source = tmp_path / "collar.tif"
    with rasterio.open(source, "w", **(profile | {"nodata": 0})) as out:
        out.write(values)
    url = str(tmp_path / "a.zarr")
    report = ingest_raster(str(source), url, codec="rgb-hyperprior-q1", tile=128, ttft_steps=2)
    assert report["complete"] and report["coded_tiles"] == 4
    coded = Archive(url).profile("collar", "pixel")
    window = bitstream.unpack(coded.read_tile((0, 0, 0))).header.window
    valid_low = values[:, :128, :128][:, ~collar[:128, :128]].min(1) / values.reshape(3, -1).max(1)
    assert all(low >= np.floor(v * 65535) - 1 for low, v in zip(window.low, valid_low))
    decoded = query_raster(url, report["id"])["array"]
    assert np.array_equal(decoded == 0, values == 0)
    error = np.abs(decoded.astype(np.float64) - values)[:, ~collar]
    assert error.mean() < 0.02 * values.max()
