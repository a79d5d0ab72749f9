"""The main job on the bundled samples: ingest a satellite raster and a CT slice into a local
archive with a small TTFT budget, query a window and a slice back, and report what it cost."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from flows.dicom_jobs import ingest_dicom, query_dicom
from flows.raster_jobs import ingest_raster, query_raster

SAMPLES = Path(__file__).resolve().parent.parent / "adapters" / "samples"
RASTER = SAMPLES / "landsat8_224078_rgb_crop256.tif"
CT = SAMPLES / "ct_3slice_01.dcm"


def run_demo(archive: str, out_dir: str, ttft_steps: int, fresh: bool, progress=None) -> dict:
    if fresh:
        shutil.rmtree(archive, ignore_errors=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    raster = ingest_raster(str(RASTER), archive, task="pixel", ttft_steps=ttft_steps, tile=128,
                           progress=progress and progress("landsat"))  # fmt: skip
    ct = ingest_dicom([str(CT)], archive, task="ct-lung-window", ttft_steps=ttft_steps, tile=256,
                      progress=progress and progress("ct"))[0]  # fmt: skip
    window = query_raster(archive, raster["id"], bbox=_centre_bbox(RASTER), out=str(out / "landsat_window.tif"))
    slices = query_dicom(archive, ct["id"], task="ct-lung-window", slices="0:1", out=str(out / "ct_series"))
    return {
        "archive": archive, "items": [raster, ct],
        "queries": [
            {"item": raster["id"], "out": window["out"], "shape": window["shape"], "tiles_read": len(window["tiles_read"])},
            {"item": ct["id"], "out": str(out / "ct_series"), "files": len(slices["files"]),
             "tiles_read": len(slices["tiles_read"])},
        ],
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def _centre_bbox(path: Path) -> tuple[float, float, float, float]:
    import rasterio

    with rasterio.open(path) as src:
        b = src.bounds
    w, h = b.right - b.left, b.top - b.bottom
    return (b.left + w / 4, b.bottom + h / 4, b.right - w / 4, b.top - h / 4)
