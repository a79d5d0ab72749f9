"""One rate-fidelity trade-off for all of a raster's windowed tiles: the scan foresees each tile's
value window, the tiles share the inverse of their windows' mean squared width as their task-loss
weight, and a profile coded with each tile's own weight goes on with it."""

import numpy as np
import pytest
import rasterio
import torch

from ttft_archive.adapters import SAMPLES, raster
from ttft_archive.adapters.archive import Archive
from ttft_archive.adapters.zoo import open_codec_by_id
from ttft_archive.flows.jobs.raster import ingest_raster
from ttft_archive.flows.jobs.task_catalog import get_task
from ttft_archive.ttft_core import TileCodec, TTFTConfig, attach_adapter, bitstream
from ttft_archive.ttft_core.missing_pixels import fill_missing
from ttft_archive.ttft_core.tile_coding import code_tiles
from ttft_archive.ttft_core.value_window import ValueWindow, shared_weight

LANDSAT = SAMPLES / "landsat8_224078_rgb_crop256.tif"
CODEC = "rgb-hyperprior-q1"


def with_collar(tmp_path):
    """The bundled Landsat crop with a nodata-0 corner, so that some tiles are partly valid."""
    with rasterio.open(LANDSAT) as src:
        profile, values = src.profile, np.maximum(src.read(), 1)
    rows, cols = np.indices(values.shape[1:])
    values[:, rows + cols < 100] = 0
    path = tmp_path / "collar.tif"
    with rasterio.open(path, "w", **(profile | {"nodata": 0})) as out:
        out.write(values)
    return path


@pytest.mark.parametrize("tile", [64, 100, 128, 300])
def test_the_scan_foresees_every_tiles_window_whatever_its_blocks(tmp_path, tile):
    path = with_collar(tmp_path)
    scanned = raster.scan(path, block=96, tile=tile)  # blocks that do not line up with the tiles
    plain = raster.scan(path, block=96)  # the item's digest and ranges do not depend on the tiles
    assert (scanned.sha256, scanned.lo, scanned.hi) == (plain.sha256, plain.lo, plain.hi)
    offsets, scales = raster.value_mapping("uint16", scanned.lo, scanned.hi)
    lo, hi = raster.tile_value_ranges(scanned, offsets, scales)
    info = raster.raster_info(path)
    assert lo.shape == (3, -(-info.height // tile), -(-info.width // tile))
    for r, c in np.ndindex(*lo.shape[1:]):
        window = raster.Window(c * tile, r * tile, min(tile, info.width - c * tile), min(tile, info.height - r * tile))
        pixels = raster.read_window(path, window)
        x = torch.from_numpy(raster.to_unit(pixels, offsets, scales))
        # the coded tile: the collar filled from the scene, its window the valid pixels' range
        coded = fill_missing(x, torch.from_numpy(pixels != 0))
        assert ValueWindow.spanning(lo[:, r, c], hi[:, r, c]) == ValueWindow.of(coded), (r, c)


def test_a_shared_weight_is_each_tiles_own_for_equal_windows_and_between_them_otherwise():
    wide, narrow = ValueWindow((0,) * 3, (40000,) * 3), ValueWindow((1000,) * 3, (9000,) * 3)
    assert shared_weight([wide, wide]) == pytest.approx(1 / wide.squared_width)
    assert 1 / wide.squared_width < shared_weight([wide, narrow]) < 1 / narrow.squared_width
    with pytest.raises(ValueError):
        shared_weight([])


def test_a_heavier_weight_buys_fidelity_with_bytes(landsat_crop):
    codec = TileCodec(attach_adapter(open_codec_by_id(CODEC)), CODEC, "zero", windowed=True)
    tile = landsat_crop[:, :128, :128]
    own = 1 / codec.window_of(tile).squared_width
    config = TTFTConfig(steps=12, lr=3e-2)
    coded = {w: code_tiles(codec, [tile], [get_task("pixel")], config, weights=[w])[0][0] for w in (own / 8, own * 8)}
    light, heavy = coded[own / 8], coded[own * 8]
    assert len(heavy.data) > len(light.data) and heavy.fidelity > light.fidelity


def test_a_tuned_ingest_shares_the_weight_the_scan_foresaw_and_an_older_profile_keeps_its_own(tmp_path):
    path = with_collar(tmp_path)
    shared, own = str(tmp_path / "shared.zarr"), str(tmp_path / "own.zarr")
    first = ingest_raster(str(path), shared, codec=CODEC, tile=128, ttft_steps=2)
    profile = Archive(shared).profile("collar", "pixel")
    windows = [bitstream.unpack(profile.read_tile(i)).header.window for i in profile.indices()]
    assert len(windows) == 4 and all(windows)
    assert profile.settings["coders"]["3"]["window_weight"] == pytest.approx(shared_weight(windows), rel=1e-12)
    # each tile's own weight: the settings of profiles coded before, other bytes
    ingest_raster(str(path), own, codec=CODEC, tile=128, ttft_steps=2, trade_off="tile")
    before = Archive(own).profile("collar", "pixel")
    assert "window_weight" not in before.settings["coders"]["3"]
    assert [len(before.read_tile(i)) for i in before.indices()] != [
        len(profile.read_tile(i)) for i in profile.indices()
    ]
    # re-run without the option, each profile goes on as it was coded
    assert ingest_raster(str(path), own, codec=CODEC, tile=128, ttft_steps=2)["written_tiles"] == 0
    assert ingest_raster(str(path), shared, codec=CODEC, tile=128, ttft_steps=2)["written_tiles"] == 0
    assert first["complete"]
    # without tuning there is nothing to weigh: the settings are those of before
    untuned = str(tmp_path / "untuned.zarr")
    ingest_raster(str(path), untuned, codec=CODEC, tile=128, ttft_steps=0)
    assert "window_weight" not in Archive(untuned).profile("collar", "pixel").settings["coders"]["3"]
