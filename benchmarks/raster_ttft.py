"""Landsat tiles through the archive with and without per-tile tuning: a real ingest (tiles of
256) and a real query of each of base_codec.py's four Landsat tiles (bands 4-3-2 of scene
224077, written as 16-bit GeoTIFFs), bytes and PSNR over the 16-bit values of the decoded
GeoTIFF against the source. The task curves of benchmarks/tasks.py measure fidelity in the
codec's stretched [0, 1] domain; this measures it in the stored values, as base_codec.py does.

``--presets``: ``none`` (no tuning), ``default`` (what an ingest does unless told: 40 adapter +
40 latent steps) and ``thorough`` (40 + 200 annealed latent steps), each at every codec of
``--codecs``. ``--windows``: each tile in its own value window (``tile``, the rgb family's
default), in the file's mapping (``item``), or both. ``--trade-offs``: windowed tiles tuned with
one loss weight for the file (``item``, the default) or each with its own window's (``tile``). Each curve gets, per file, its BD-rate
against JPEG 2000's curve on the same pixels (benchmarks/results/base_codec.json, part landsat,
for the 256x256 tiles; swept here for another ``--size``, a file of several tiles), and their mean.

    .venv/bin/python benchmarks/raster_ttft.py [--codecs rgb-checkerboard-q0,...] [--presets none,default]
        [--windows tile,item] [--trade-offs item,tile] [--size 256] [--tile 256] [--backbone hyperprior] [--count 4] [--threads 1] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicom_ttft import against_jpeg2000, bd_rates  # noqa: E402

from ttft_archive.adapters import eval_sets, raster  # noqa: E402
from ttft_archive.adapters.classical import RATES, sweep  # noqa: E402
from ttft_archive.adapters.zoo import family_rate_points  # noqa: E402
from ttft_archive.flows.jobs.raster import ingest_raster, query_raster  # noqa: E402
from ttft_archive.ttft_core.metrics import psnr  # noqa: E402

# the tiles are written without their georeference, which nothing here reads
warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
FIGURE = "psnr_16bit"
TUNING = {"none": {"ttft_steps": 0}, "default": {}}  # any other name is a settings preset


def write_tiles(count: int, size: int, work: Path) -> list[Path]:
    """The evaluation tiles (or windows of ``size`` around the same places) as plain 3-band 16-bit
    GeoTIFFs named as base_codec.py names them."""
    paths = []
    for image in eval_sets.landsat(count, size).images:
        path = work / f"{image.name}.tif"
        stack = np.ascontiguousarray(image.stored.transpose(2, 0, 1))
        profile = {"driver": "GTiff", "width": stack.shape[2], "height": stack.shape[1], "count": 3, "dtype": "uint16"}
        with rasterio.open(path, "w", **profile) as out:
            out.write(stack)
        paths.append(path)
    return paths


def measure(source: Path, codec: str, preset: str, window: str, tile: int, work: Path, trade_off: str = "item") -> dict:
    name = f"{source.stem}-{codec}-{preset}-{window}-{trade_off}"
    url = work / f"{name}.zarr"
    shutil.rmtree(url, ignore_errors=True)
    started = time.perf_counter()
    tuning = TUNING.get(preset, {"preset": preset})
    report = ingest_raster(str(source), str(url), codec=codec, tile=tile, window=window, trade_off=trade_off, **tuning)
    seconds = time.perf_counter() - started
    decoded_path = work / f"{name}.tif"
    query_raster(str(url), report["id"], out=str(decoded_path))
    original, decoded = (raster.read_window(p).astype(np.float64) for p in (source, decoded_path))
    shutil.rmtree(url)
    return {
        "tile": source.stem,
        "codec": codec,
        "preset": preset,
        "window": window,
        "trade_off": trade_off,
        "curve": curve_name(preset, window, trade_off),
        "bytes": report["bytes"],
        "bpp": 8 * report["bytes"] / original[0].size,
        FIGURE: _psnr16(decoded, original),
        "ingest_seconds": round(seconds, 1),
    }


def curve_name(preset: str, window: str, trade_off: str) -> str:
    """The default (windows, one trade-off for a file's tiles) is named by its preset alone."""
    if window == "item":
        return f"{preset}, item window"
    return preset if trade_off == "item" else f"{preset}, each tile's trade-off"


def jpeg2000_curve(source: Path) -> list[dict]:
    """JPEG 2000 swept on the file to the Landsat part's target rates, as base_codec.py sweeps it
    (its colour transform on the three bands): bpp and PSNR over the 16-bit values."""
    stored = np.ascontiguousarray(raster.read_window(source).transpose(1, 2, 0))
    points = sweep("jpeg2000", stored, RATES["landsat"])
    pixels = stored.shape[0] * stored.shape[1]
    return [{"bpp": 8 * p.nbytes / pixels, FIGURE: _psnr16(p.decoded, stored), "level": p.level} for p in points]


def _psnr16(a: np.ndarray, b: np.ndarray) -> float:
    return psnr(torch.from_numpy(a.astype(np.float64)), torch.from_numpy(b.astype(np.float64)), peak=65535)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="checkerboard", help="the rgb family's points of this backbone")
    parser.add_argument("--codecs", default=None, help="comma-separated codec ids (default: every --backbone point)")
    parser.add_argument("--presets", default="none,default")
    parser.add_argument("--windows", default="tile", help="tile, item or both: the value windows to measure")
    parser.add_argument(
        "--trade-offs",
        default="item",
        help="item, tile or both: one loss weight for a file's windowed tiles, or each's own",
    )
    parser.add_argument("--size", type=int, default=256, help="side of each file (256: one tile)")
    parser.add_argument("--tile", type=int, default=256, help="the ingest's tile side")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "raster_ttft_landsat.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    codecs = args.codecs.split(",") if args.codecs else [e.codec_id for e in family_rate_points("rgb", args.backbone)]
    rows, jpeg2000 = [], {}
    with tempfile.TemporaryDirectory() as work:
        for source in write_tiles(args.count, args.size, Path(work)):
            if args.size != 256:
                jpeg2000[source.stem] = jpeg2000_curve(source)
            for codec in codecs:
                for preset in args.presets.split(","):
                    for window in args.windows.split(","):
                        for trade_off in args.trade_offs.split(",") if window == "tile" else ["item"]:
                            rows.append(measure(source, codec, preset, window, args.tile, Path(work), trade_off))
                            print(rows[-1], flush=True)
    per_tile = {}
    for tile in dict.fromkeys(r["tile"] for r in rows):
        mine = [r | {"preset": r["curve"]} for r in rows if r["tile"] == tile]
        if jpeg2000:
            per_tile[tile] = bd_rates(mine, [{"bpp": p["bpp"], "metric": p[FIGURE]} for p in jpeg2000[tile]])
        else:
            per_tile[tile] = against_jpeg2000(mine, "landsat", Path(tile))
    curves = list(dict.fromkeys(r["curve"] for r in rows))
    result = {
        "command": "python benchmarks/raster_ttft.py " + " ".join(sys.argv[1:]),
        "machine": f"{torch.get_num_threads()} torch threads",
        "rows": rows,
        "jpeg2000": jpeg2000 or "benchmarks/results/base_codec.json, part landsat",
        "bd_rate_vs_jpeg2000_percent": {
            "per_tile": per_tile,
            "mean": {c: float(np.mean([t[c] for t in per_tile.values()])) for c in curves},
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["bd_rate_vs_jpeg2000_percent"], indent=1))


if __name__ == "__main__":
    main()
