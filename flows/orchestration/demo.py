"""The main job on the bundled samples, under Prefect (no server needed: Prefect starts a temporary
one): ingest a satellite raster and a CT slice into a local archive with a small TTFT budget,
query a window and a slice back, and report what it cost."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from prefect import flow

from ttft_archive.adapters import SAMPLES
from ttft_archive.configs import IngestOptions
from ttft_archive.flows.orchestration.prefect_flows import ingest_dicom_series, ingest_raster, query_decode

RASTER = SAMPLES / "landsat8_224078_rgb_crop256.tif"
CT = SAMPLES / "ct_3slice_01.dcm"


@flow(name="demo", log_prints=True)
def run_demo(archive: str, out_dir: str, ttft_steps: int, fresh: bool, show_progress: bool = False) -> dict:
    if fresh:
        shutil.rmtree(archive, ignore_errors=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    raster_options = IngestOptions(task="pixel", ttft_steps=ttft_steps, tile=128)
    raster = ingest_raster(str(RASTER), archive, raster_options, show_progress=show_progress)
    ct_options = IngestOptions(task="ct-lung-window", ttft_steps=ttft_steps)
    [ct] = ingest_dicom_series(str(CT), archive, ct_options, show_progress=show_progress)
    window = query_decode(archive, raster["id"], str(out / "landsat_window.tif"), bbox=list(_centre_bbox(RASTER)))
    slices = query_decode(archive, ct["id"], str(out / "ct_series"), task="ct-lung-window", slices="0:1")
    return {
        "archive": archive,
        "items": [raster, ct],
        "queries": [
            {"item": raster["id"], "out": window["out"], "shape": window["shape"], "tiles_read": window["tiles_read"]},
            {
                "item": ct["id"],
                "out": str(out / "ct_series"),
                "files": len(slices["files"]),
                "tiles_read": slices["tiles_read"],
            },
        ],
        "seconds": time.perf_counter() - start,
    }


def _centre_bbox(path: Path) -> tuple[float, float, float, float]:
    import rasterio

    with rasterio.open(path) as src:
        b = src.bounds
    w, h = b.right - b.left, b.top - b.bottom
    return (b.left + w / 4, b.bottom + h / 4, b.right - w / 4, b.top - h / 4)
