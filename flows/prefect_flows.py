"""Prefect flows over the plain job functions: what operators run and watch in the Prefect UI.

Each flow shows a progress artifact that moves as tiles finish and a summary table per item;
query flows say what they returned. The work itself stays in flows.raster_jobs / flows.dicom_jobs,
which run and test without Prefect.
"""

from __future__ import annotations

import re
import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows import dicom_jobs, raster_jobs

SUMMARY_COLUMNS = ("id", "profile", "codec", "tiles", "coded_tiles", "empty_tiles", "bytes", "bpp", "ratio",
                   "fidelity_mean", "ttft_seconds", "written_tiles", "seconds")  # fmt: skip


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


class _ProgressArtifact:
    """Moves a progress artifact at most every ``every`` seconds: one API call per tile would be
    too many on large scenes."""

    def __init__(self, description: str, every: float = 2.0):
        self.id = create_progress_artifact(0.0, description=description)
        self.every, self.last = every, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self.last >= self.every:
            update_progress_artifact(self.id, 100.0 * done / total)
            self.last = now


def _summary_table(reports: list[dict], what: str) -> None:
    rows = [{k: (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k)) for k in SUMMARY_COLUMNS} for r in reports]
    create_table_artifact(rows, key=artifact_key("ingest", reports[0]["id"], reports[0]["profile"]),
                          description=f"Ingest of {what}: tiles, bytes, bits per pixel, ratio to the source size, "
                                      f"task fidelity at encode time, TTFT seconds")  # fmt: skip


@task(retries=2, retry_delay_seconds=10)
def ingest_raster_task(source: str, archive: str, **options) -> dict:
    progress = _ProgressArtifact(f"tiles of {source} coded into {archive}")
    return raster_jobs.ingest_raster(source, archive, progress=progress, **options)


@task(retries=2, retry_delay_seconds=10)
def ingest_dicom_task(source: str, archive: str, **options) -> list[dict]:
    progress = _ProgressArtifact(f"tiles of the DICOM series in {source} coded into {archive}")
    return dicom_jobs.ingest_dicom([source], archive, progress=progress, **options)


@flow(name="ingest-raster", log_prints=True)
def ingest_raster(source: str, archive: str, task: str = "pixel", codec: str | None = None,
                  quality: int | None = None, ttft_steps: int = 0, tile: int = 256) -> dict:  # fmt: skip
    log = get_run_logger()
    log.info("ingesting %s into %s (task %s, %d TTFT steps per tile)", source, archive, task, ttft_steps)
    report = ingest_raster_task(source, archive, task=task, codec=codec, quality=quality,
                                ttft_steps=ttft_steps, tile=tile)  # fmt: skip
    _summary_table([report], source)
    log.info("%s/%s: %d tiles, %d bytes, %.3f bpp", report["id"], report["profile"], report["tiles"],
             report["bytes"], report["bpp"])  # fmt: skip
    return {k: report[k] for k in SUMMARY_COLUMNS}


@flow(name="ingest-dicom-series", log_prints=True)
def ingest_dicom_series(source: str, archive: str, task: str = "pixel", codec: str | None = None,
                        quality: int | None = None, ttft_steps: int = 0, tile: int = 256) -> list[dict]:  # fmt: skip
    log = get_run_logger()
    log.info("ingesting the DICOM series in %s into %s (task %s)", source, archive, task)
    reports = ingest_dicom_task(source, archive, task=task, codec=codec, quality=quality,
                                ttft_steps=ttft_steps, tile=tile)  # fmt: skip
    for r in reports:
        _summary_table([r], f"series {r['id']}")
    return [{k: r[k] for k in SUMMARY_COLUMNS} for r in reports]


@flow(name="query-decode", log_prints=True)
def query_decode(archive: str, item: str, out: str, task: str = "pixel", bbox: list[float] | None = None,
                 crs: str | None = None, slices: str | None = None) -> dict:  # fmt: skip
    from adapters.archive import Archive

    kind = Archive(archive, create=False).item(item)["source"]["kind"]
    if kind == "dicom":
        result = dicom_jobs.query_dicom(archive, item, task=task, slices=slices, out=out)
        result.pop("arrays")
        returned = f"{len(result['files'])} DICOM files (slices {result['slices'][0]}:{result['slices'][1]}) in `{out}`"
    else:
        result = raster_jobs.query_raster(archive, item, task=task, bbox=tuple(bbox) if bbox else None, crs=crs, out=out)
        result.pop("array"), result.pop("valid")
        returned = f"GeoTIFF `{out}` of shape {result['shape']} (window {result['window']})"
    tiles = len(result.pop("tiles_read"))
    create_markdown_artifact(
        f"### Query of `{item}` / `{task}`\n\nReturned {returned}, decoded from {tiles} tiles of `{archive}`.",
        key=artifact_key("query", item, task), description="what the query returned",
    )  # fmt: skip
    return result | {"tiles_read": tiles}
