"""Archive ingest throughput and memory as scenes grow, and window-query latency.

Mosaics the shared Landsat scene (landsat8_224078_rgb_uint16.tif, 3 x 1860 x 2041) into square
scenes of about 2k, 4k and 8k pixels a side (written window by window), ingests each without TTFT
in a fresh process (peak RSS is that process's), then times 512 x 512 window queries on the
largest. Writes benchmarks/results/archive.json and archive.png.

    .venv/bin/python benchmarks/archive.py [--sides 2048 4096 8192] [--codec rgb-hyperprior-q3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
SOURCE = ROOT.parent / "shared" / "data" / "satellite" / "landsat8_224078_rgb_uint16.tif"
RESULTS = ROOT / "benchmarks" / "results"


def make_mosaic(side: int, path: Path) -> None:
    """A side x side scene tiled from the source, mirrored so that seams stay continuous."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(SOURCE) as src:
        data = src.read()
        profile = src.profile | {
            "width": side,
            "height": side,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            "compress": "deflate",
        }
    h, w = data.shape[1:]
    tile = np.concatenate([data, data[:, :, ::-1]], 2)
    tile = np.concatenate([tile, tile[:, ::-1]], 1)  # 2h x 2w, mirrored both ways
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, side, 512):
            for left in range(0, side, 512):
                hh, ww = min(512, side - top), min(512, side - left)
                rows = np.arange(top, top + hh) % (2 * h)
                cols = np.arange(left, left + ww) % (2 * w)
                dst.write(tile[:, rows][:, :, cols], window=Window(left, top, ww, hh))


def child_ingest(scene: str, archive: str, codec: str) -> dict:
    from ttft_archive.flows.jobs.raster import ingest_raster

    start = time.perf_counter()
    report = ingest_raster(scene, archive, codec=codec, tile=256, ttft_steps=0)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tiles": report["tiles"],
        "bytes": report["bytes"],
        "bpp": report["bpp"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def query_latency(archive: str, item: str, repeats: int) -> list[float]:
    import rasterio

    from ttft_archive.adapters.archive import Archive
    from ttft_archive.flows.jobs.raster import query_raster

    times = []
    for i in range(repeats):
        start = time.perf_counter()
        # windows at different places, not aligned to the 256 tile grid (so 9 tiles are decoded)
        left, top = 1000 + 517 * i, 900 + 389 * i
        meta = Archive(archive, create=False).item(item)["source"]
        t = rasterio.Affine(*meta["transform"])
        xmin, ymax = t * (left, top)
        xmax, ymin = t * (left + 512, top + 512)
        r = query_raster(archive, item, bbox=(xmin, ymin, xmax, ymax))
        assert r["shape"][1:] == [512, 512], r["shape"]
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--codec", default=None, help="default: the best shipped rgb codec")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_ingest(*args.child)))
        return
    from ttft_archive.adapters.zoo import default_codec_id

    codec = args.codec or default_codec_id("rgb") or "hyperprior-small"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides:
            scene, archive = Path(tmp) / f"scene_{side}.tif", str(Path(tmp) / f"a_{side}.zarr")
            make_mosaic(side, scene)
            run = subprocess.run(
                [sys.executable, __file__, "--child", str(scene), archive, codec],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            row = json.loads(run.stdout.strip().splitlines()[-1])
            row |= {"side": side, "megapixels": side * side / 1e6, "mpix_per_s": side * side / 1e6 / row["seconds"]}
            rows.append(row)
            print(
                f"{side}x{side}: {row['tiles']} tiles in {row['seconds']:.1f} s = {row['mpix_per_s']:.3f} MPix/s, "
                f"peak RSS {row['peak_rss_mib']:.0f} MiB, {row['bpp']:.3f} bpp",
                flush=True,
            )
        latency = query_latency(archive, f"scene_{args.sides[-1]}", args.repeats)
    result = {
        "codec": codec,
        "source": str(SOURCE.name),
        "ttft_steps": 0,
        "tile": 256,
        "ingest": rows,
        "query_512_seconds": latency,
        "query_512_seconds_median": statistics.median(latency),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "archive.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "archive.png")
    print(f"512x512 query on {args.sides[-1]}: median {result['query_512_seconds_median']:.2f} s")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["ingest"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    mp = [r["megapixels"] for r in rows]
    axes[0].plot(mp, [r["mpix_per_s"] for r in rows], "o-")
    axes[0].set_xlabel("scene size (megapixels)")
    axes[0].set_ylabel("ingest MPix/s")
    axes[1].plot(mp, [r["peak_rss_mib"] for r in rows], "o-", color="tab:red")
    axes[1].set_xlabel("scene size (megapixels)")
    axes[1].set_ylabel("peak RSS (MiB)")
    axes[1].set_ylim(bottom=0)
    fig.suptitle(f"ingest without TTFT, codec {result['codec']}, 256-pixel tiles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
