"""Archive ingest throughput and memory as scenes grow, and window-query latency.

Mosaics the shared Landsat scene (landsat8_224078_rgb_uint16.tif, 3 x 1860 x 2041) into square
scenes of about 2k, 4k and 8k pixels a side (written window by window), ingests each without TTFT
in a fresh process (peak RSS is that process's), then times 512 x 512 window queries on the
largest. Writes benchmarks/results/archive.json and archive.png.

    .venv/bin/python benchmarks/archive.py [--sides 2048 4096 8192] [--codec rgb-hyperprior-q3]

With ``--disk SCENE...`` it measures instead what the archive costs on disk: each scene (optionally
its top-left ``--crop`` pixels) is ingested once, and the bytes of every file of the archive are
set against the sum of its tile bitstreams (apparent sizes, what object storage bills, and
allocated blocks, what a local file system uses), with a breakdown by file kind. Writes
benchmarks/results/archive_disk.json.

    .venv/bin/python benchmarks/archive.py --disk ../shared/data/satellite/rgb_byte_nodata0.tif \
        ../shared/data/satellite/landsat8_224078_rgb_uint16.tif --crop 1024 --ttft-steps 0
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


def crop_scene(source: Path, crop: int | None, path: Path) -> Path:
    """The scene's top-left ``crop`` x ``crop`` pixels (all of it when None), as its own GeoTIFF."""
    if not crop:
        return source
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        window = Window(0, 0, min(crop, src.width), min(crop, src.height))
        data = src.read(window=window)
        masks = src.read_masks(window=window)
        sidecar = src.nodata is None and bool((masks == 0).any())
        profile = src.profile | {
            "width": window.width,
            "height": window.height,
            "transform": src.window_transform(window),
            "tiled": False,
        }
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if sidecar:
            dst.write_mask(masks.min(0))
    return path


def disk_usage(folder: Path) -> dict:
    """Apparent and allocated bytes of every file under ``folder``, in all and by kind (the array or
    metadata file a file belongs to)."""
    by_kind: dict[str, dict] = {}
    total = {"files": 0, "apparent_bytes": 0, "allocated_bytes": 0}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        parts = f.relative_to(folder).parts
        kind = parts[parts.index("c") - 1] if "c" in parts else f.name
        st = f.stat()
        for row in (total, by_kind.setdefault(kind, {"files": 0, "apparent_bytes": 0, "allocated_bytes": 0})):
            row["files"] += 1
            row["apparent_bytes"] += st.st_size
            row["allocated_bytes"] += st.st_blocks * 512
    return total | {"by_kind": by_kind}


def measure_disk(scenes: list[str], crop: int | None, codec: str, ttft_steps: int, tile: int) -> dict:
    from ttft_archive.adapters.archive import VERSION
    from ttft_archive.flows.jobs.raster import ingest_raster

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scene in scenes:
            source = crop_scene(Path(scene), crop, Path(tmp) / f"{Path(scene).stem}.tif")
            archive = Path(tmp) / f"{Path(scene).stem}.zarr"
            start = time.perf_counter()
            report = ingest_raster(str(source), str(archive), codec=codec, tile=tile, ttft_steps=ttft_steps)
            usage = disk_usage(archive)
            row = {
                "scene": Path(scene).name,
                "crop": crop,
                "tiles": report["tiles"],
                "coded_tiles": report["coded_tiles"],
                "bitstream_bytes": report["bytes"],
                "ingest_seconds": time.perf_counter() - start,
                **usage,
                "apparent_ratio": usage["apparent_bytes"] / report["bytes"],
                "allocated_ratio": usage["allocated_bytes"] / report["bytes"],
            }
            rows.append(row)
            print(
                f"{row['scene']} ({report['tiles']} tiles): archive {usage['apparent_bytes']} bytes in "
                f"{usage['files']} files ({usage['allocated_bytes']} allocated) for {report['bytes']} bitstream "
                f"bytes: {row['apparent_ratio']:.3f}x ({row['allocated_ratio']:.3f}x allocated)",
                flush=True,
            )
    return {"archive_version": VERSION, "codec": codec, "ttft_steps": ttft_steps, "tile": tile, "scenes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--codec", default=None, help="default: the best shipped rgb codec")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--disk", nargs="+", metavar="SCENE", help="measure archive bytes on disk of these scenes")
    parser.add_argument("--crop", type=int, default=None, help="--disk: ingest the scenes' top-left CROP pixels")
    parser.add_argument("--ttft-steps", type=int, default=0, help="--disk: TTFT steps per tile")
    parser.add_argument("--tile", type=int, default=256, help="--disk: tile size")
    parser.add_argument("--out", default="archive_disk.json", help="--disk: result file in benchmarks/results")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_ingest(*args.child)))
        return
    from ttft_archive.adapters.zoo import default_codec_id

    codec = args.codec or default_codec_id("rgb") or "hyperprior-small"
    if args.disk:
        result = measure_disk(args.disk, args.crop, codec, args.ttft_steps, args.tile)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / args.out).write_text(json.dumps(result, indent=2))
        return
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
