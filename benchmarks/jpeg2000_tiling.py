"""What coding a window in tiles costs JPEG 2000: each --size window of Landsat 224077 (bands
4-3-2, 16-bit) coded whole and as separate --tile tiles, both swept to the Landsat part's target
rates (adapters.classical.RATES), PSNR over the 16-bit values of the whole window; the BD-rate of
the tiled curve against the whole one, per window and their mean. It tells how much of a
comparison on small crops is the classical codec's own per-image overhead.

    .venv/bin/python benchmarks/jpeg2000_tiling.py [--size 1024] [--tile 256] [--count 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ttft_archive.adapters import eval_sets  # noqa: E402
from ttft_archive.adapters.classical import RATES, sweep  # noqa: E402
from ttft_archive.ttft_core.metrics import bd_rate, psnr  # noqa: E402


def curve(stored: np.ndarray, tile: int | None) -> list[dict]:
    """(bpp, PSNR) of the window coded whole (``tile`` None) or tile by tile, at each target rate."""
    h, w = stored.shape[:2]
    side = tile or max(h, w)
    places = [(r, c) for r in range(0, h, side) for c in range(0, w, side)]
    swept = [
        sweep("jpeg2000", np.ascontiguousarray(stored[r : r + side, c : c + side]), RATES["landsat"]) for r, c in places
    ]
    points = []
    for i, target in enumerate(RATES["landsat"]):
        decoded = np.zeros_like(stored)
        for (r, c), tile_points in zip(places, swept):
            decoded[r : r + side, c : c + side] = tile_points[i].decoded
        nbytes = sum(tile_points[i].nbytes for tile_points in swept)
        peak_psnr = psnr(
            torch.from_numpy(decoded.astype(np.float64)), torch.from_numpy(stored.astype(np.float64)), peak=65535
        )
        points.append({"target_bpp": target, "bpp": 8 * nbytes / (h * w), "psnr_16bit": peak_psnr})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "jpeg2000_tiling_landsat.json"))
    args = parser.parse_args()
    windows = {}
    for image in eval_sets.landsat(args.count, args.size).images:
        whole, tiled = curve(image.stored, None), curve(image.stored, args.tile)
        bd = bd_rate(
            *([p[k] for p in whole] for k in ("bpp", "psnr_16bit")),
            *([p[k] for p in tiled] for k in ("bpp", "psnr_16bit")),
        )
        windows[image.name] = {"whole": whole, "tiled": tiled, "tiled_bd_rate_percent": bd}
        print(f"{image.name}: in tiles of {args.tile}, {bd:+.1f}% against whole", flush=True)
    result = {
        "command": "python benchmarks/jpeg2000_tiling.py " + " ".join(sys.argv[1:]),
        "data": f"{args.count} windows {args.size}x{args.size} of Landsat 8 224077 (B4, B3, B2; 16-bit)",
        "tile": args.tile,
        "windows": windows,
        "mean_tiled_bd_rate_percent": float(np.mean([w["tiled_bd_rate_percent"] for w in windows.values()])),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"mean_tiled_bd_rate_percent": result["mean_tiled_bd_rate_percent"]}))


if __name__ == "__main__":
    main()
