"""Scenes with a nodata collar through the archive: a real ingest (tiles of 512) and query of each
file whole, at every rate point of the rgb family, bytes and PSNR over the valid pixels (the
stored values, peak of the dtype) of the decoded GeoTIFF against the source. The collar comes
back as nodata whatever the codec put there, so only the valid pixels count.

Curves: ``filled`` (what an ingest does: the collar coded as a smooth fill of the scene, the
tuning and the metric on valid pixels only) and, with ``--as-stored``, the collar coded with its
stored values as before. JPEG 2000 is swept on each file as stored (the collar as it is, which
is what an archive of the file holds) and on the file with the same fill, the strongest case
for it; each curve gets its BD-rate against both.

The files: rasterio's RGB.byte.tif (8-bit) and rio-tiler's mosaic_cog1.tif (16-bit), both with
nodata 0 around a rotated footprint, about a third of their pixels. The hyperprior backbone
(the default) never saw either; the checkerboard's context was trained on tiles of the second.

    .venv/bin/python benchmarks/nodata_collar.py [--backbone hyperprior] [--codecs ID,...] [--presets none]
        [--as-stored] [--trade-off tile] [--threads 1] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicom_ttft import bd_rates  # noqa: E402

from ttft_archive.adapters.classical import RATES, sweep  # noqa: E402
from ttft_archive.adapters.zoo import family_rate_points  # noqa: E402
from ttft_archive.flows.jobs import raster as raster_jobs  # noqa: E402
from ttft_archive.flows.jobs.raster import ingest_raster, query_raster  # noqa: E402
from ttft_archive.ttft_core.missing_pixels import fill_missing  # noqa: E402

SATELLITE = ROOT.parent / "shared" / "data" / "satellite"
FILES = {"rgb_byte_nodata0.tif": "kodak", "mosaic_cog1_uint16.tif": "landsat"}  # file -> JPEG 2000's rates
TUNING = {"none": {"ttft_steps": 0}, "default": {}}  # any other name is a settings preset
FIGURE = "psnr_valid"


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) values and where they are valid (GDAL's dataset mask)."""
    with rasterio.open(path) as src:
        return src.read(), src.dataset_mask() > 0


def psnr_valid(decoded: np.ndarray, source: np.ndarray, valid: np.ndarray) -> float:
    peak = float(np.iinfo(source.dtype).max)
    err = decoded[:, valid].astype(np.float64) - source[:, valid].astype(np.float64)
    return float(10 * np.log10(peak**2 / np.mean(err**2)))


def measure(path: Path, codec: str, preset: str, curve: str, work: Path, trade_off: str = "item") -> dict:
    url = work / f"{path.stem}-{codec}-{preset}-{curve}.zarr"
    out = work / f"{path.stem}-{codec}-{preset}-{curve}.tif"
    started = time.perf_counter()
    tuning = TUNING.get(preset, {"preset": preset})
    report = ingest_raster(str(path), str(url), codec=codec, tile=512, trade_off=trade_off, **tuning)
    seconds = time.perf_counter() - started
    query_raster(str(url), report["id"], out=str(out))
    (source, valid), (decoded, _) = read(path), read(out)
    shutil.rmtree(url)
    return {
        "file": path.stem,
        "codec": codec,
        "preset": curve
        if preset == "none"
        else f"{curve}, {preset}" + ("" if trade_off == "item" else ", each tile's trade-off"),
        "bytes": report["bytes"],
        "bpp": 8 * report["bytes"] / valid.size,
        FIGURE: psnr_valid(decoded, source, valid),
        "ingest_seconds": round(seconds, 1),
    }


def jpeg2000_curves(path: Path, rates: str) -> dict[str, list[dict]]:
    """JPEG 2000 on the file as stored and with its collar filled as an ingest fills it."""
    source, valid = read(path)
    peak = float(np.iinfo(source.dtype).max)
    filled = fill_missing(torch.from_numpy(source / peak), torch.from_numpy(valid)).numpy()
    images = {"as stored": source, "filled": np.rint(filled * peak).astype(source.dtype)}
    curves = {}
    for name, image in images.items():
        points = sweep("jpeg2000", np.ascontiguousarray(image.transpose(1, 2, 0)), RATES[rates])
        curves[name] = [
            {"bpp": 8 * p.nbytes / valid.size, "metric": psnr_valid(p.decoded.transpose(2, 0, 1), source, valid)}
            for p in points
        ]
    return curves


def code_as_stored() -> None:
    """The ingest before the fill: the collar's stored values coded, every pixel in the loss."""
    raster_jobs.fill_missing = lambda x, valid: x
    raster_jobs.on_valid_pixels = lambda task, valid: task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="hyperprior")
    parser.add_argument("--codecs", default=None, help="comma-separated codec ids (default: every --backbone point)")
    parser.add_argument("--presets", default="none")
    parser.add_argument("--as-stored", action="store_true", help="measure the collar coded as stored instead")
    parser.add_argument("--trade-off", default="item", help="item (the default) or tile: the tuned tiles' loss weights")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nodata_collar.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    curve = "as stored" if args.as_stored else "filled"
    if args.as_stored:
        code_as_stored()
    codecs = args.codecs.split(",") if args.codecs else [e.codec_id for e in family_rate_points("rgb", args.backbone)]
    rows, jpeg2000, bd = [], {}, {}
    with tempfile.TemporaryDirectory() as work:
        for file, rates in FILES.items():
            name = Path(file).stem
            jpeg2000[name] = jpeg2000_curves(SATELLITE / file, rates)
            for codec in codecs:
                for preset in args.presets.split(","):
                    rows.append(measure(SATELLITE / file, codec, preset, curve, Path(work), args.trade_off))
                    print(rows[-1], flush=True)
            mine = [r for r in rows if r["file"] == name]
            bd[name] = {f"vs JPEG 2000 {k}": bd_rates(mine, theirs) for k, theirs in jpeg2000[name].items()}
    result = {
        "command": "python benchmarks/nodata_collar.py " + " ".join(sys.argv[1:]),
        "machine": f"{torch.get_num_threads()} torch threads",
        "rows": rows,
        "jpeg2000": jpeg2000,
        "bd_rate_percent": bd,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(bd, indent=1))


if __name__ == "__main__":
    main()
