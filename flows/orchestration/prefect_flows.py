"""Prefect flows over the plain job functions: what operators run and watch in the Prefect UI.

An ingest plans its item (flows.jobs.raster / flows.jobs.dicom), codes each tile the archive lacks
as its own task (retried, cached on the archive and the tile's content hash, its TTFT step inside
the ``gpu`` global concurrency limit) on threads or a Dask cluster, then marks the profile
complete. Runs show a progress artifact that moves as tiles finish and a summary table per item;
query runs say what they returned. Everything here is orchestration: the work stays in the jobs,
which run and test without Prefect.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from ttft_archive.configs import IngestOptions
from ttft_archive.configs.settings import OrchestrationSettings
from ttft_archive.flows.jobs import codec_setup
from ttft_archive.flows.jobs import dicom as dicom_jobs
from ttft_archive.flows.jobs import raster as raster_jobs
from ttft_archive.flows.jobs.query import query_item
from ttft_archive.flows.jobs.tiles import encode_batch, finish_ingest, job_batches, tiles_to_code
from ttft_archive.flows.options import ProgressBar, storage_options_from_env
from ttft_archive.flows.training.base_codec import TrainBaseJob
from ttft_archive.flows.training.task_adapter import TrainAdapterJob

SUMMARY_COLUMNS = (
    "id",
    "profile",
    "codec",
    "tiles",
    "coded_tiles",
    "empty_tiles",
    "bytes",
    "exception_bytes",
    "bpp",
    "bits_per_sample",
    "ratio",
    "fidelity_mean",
    "ttft_steps",
    "ttft_seconds",
    "ttft_skipped_tiles",
    "written_tiles",
    "seconds",
    "complete",
)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


class _ProgressArtifact:
    """Moves a progress artifact at most every ``every`` seconds (one API call per tile would be
    too many on large scenes), and a terminal bar when asked. The ingest run creates it, so the
    operator sees it there; the tile subflow moves it."""

    def __init__(self, artifact_id, terminal: ProgressBar | None = None, every: float = 2.0):
        self.id, self.terminal, self.every, self.last = artifact_id, terminal, every, 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.terminal:
            self.terminal(done, total)
        now = time.monotonic()
        if done == total or now - self.last >= self.every:
            update_progress_artifact(self.id, 100.0 * done / total)
            self.last = now


def _summary_table(report: dict, what: str) -> None:
    # one row per figure: sixteen columns of one row would scroll sideways in the UI
    rows = [
        {"figure": k, "value": round(report[k], 4) if isinstance(report.get(k), float) else report.get(k)}
        for k in SUMMARY_COLUMNS
    ]
    create_table_artifact(
        rows,
        key=artifact_key("ingest", report["id"], report["profile"]),
        description=f"Ingest of {what}: tiles, bytes, bits per pixel, ratio to the source size, "
        f"task fidelity at encode time, TTFT steps, seconds and skipped tiles",
    )


# ---- tiles ----
def _batch_cache_key(context, parameters) -> str:
    """Tiles already coded into this very archive (its uid changes when it is made anew) from the
    same pixels and settings are not coded again, whichever run asks."""
    job, tiles = parameters["job"], parameters["tiles"]
    digest = hashlib.sha256(json.dumps([[list(index), key] for index, key in tiles]).encode()).hexdigest()
    return f"ttft-tiles-{job.archive_uid}-{job.item}-{job.task}-{digest}"


@task(
    name="encode-tile-batch",
    task_run_name="{job.label} {name}",
    cache_key_fn=_batch_cache_key,
    persist_result=True,
    retry_delay_seconds=5,
)
def encode_batch_task(job, tiles: list, name: str, ttft_limit: str) -> list[dict]:
    """One TTFT batch of tiles (``job.batch`` of them, one when tiles are large)."""
    return encode_batch(job, tiles, guard=functools.partial(concurrency, ttft_limit, occupy=1))


def _batch_name(tiles: list) -> str:
    first = list(tiles[0][0])
    return f"tile {first}" if len(tiles) == 1 else f"tiles {first} +{len(tiles) - 1}"


def _ensure_limit(name: str, slots: int) -> None:
    """Create the TTFT concurrency limit when the server has none of that name; an operator's own
    limit is left as it is."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))


def task_runner(orchestration: OrchestrationSettings):
    if orchestration.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if orchestration.dask_address:
            return DaskTaskRunner(address=orchestration.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": orchestration.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    return ThreadPoolTaskRunner(max_workers=orchestration.workers)


@flow(name="encode-tiles", flow_run_name="tiles of {job.item}")
def encode_tiles(
    job, todo: list, total: int, orchestration: OrchestrationSettings, progress_id: str, show_progress: bool = False
) -> list[dict]:
    """The tiles the archive lacks, ``job.batch`` to a task (tuned in one TTFT batch); the progress
    artifact moves as they finish."""
    log = get_run_logger()
    _ensure_limit(orchestration.ttft_limit, orchestration.ttft_slots)
    terminal = ProgressBar(job.item) if show_progress else None
    progress = _ProgressArtifact(progress_id, terminal)
    batch_task = encode_batch_task.with_options(retries=orchestration.tile_retries)
    futures = [batch_task.submit(job, b, _batch_name(b), orchestration.ttft_limit) for b in job_batches(job, todo)]
    outcomes = []
    for future in as_completed(futures):
        outcomes += future.result()
        progress(total - len(todo) + len(outcomes), total)
    if terminal:
        terminal.close()
    log.info(
        "%s: %d tiles coded on %s (%d workers)", job.label, len(outcomes), orchestration.runner, orchestration.workers
    )
    return sorted(outcomes, key=lambda o: o["index"])


def _code_item(job, orchestration: OrchestrationSettings, show_progress: bool) -> dict:
    started = time.perf_counter()
    todo = tiles_to_code(job)
    total = math.prod(job.grid[k] for k in ("slices", "rows", "cols"))
    get_run_logger().info("%s: %d of %d tiles to code", job.label, len(todo), total)
    progress_id = create_progress_artifact(
        100.0 * (total - len(todo)) / total, description=f"tiles of {job.label} coded into {job.archive_url}"
    )
    outcomes = []
    if todo:
        runner = encode_tiles.with_options(task_runner=task_runner(orchestration))
        outcomes = runner(job, todo, total, orchestration, str(progress_id), show_progress)
    return finish_ingest(job.archive_url, job.storage_options, job.item, job.task, outcomes, started)


def _log_report(report: dict) -> None:
    get_run_logger().info(
        "%s/%s: %d tiles (%d empty), %d bytes, %.3f bpp, ratio %s, %d TTFT steps in %.1f s, %d tiles left untuned",
        report["id"],
        report["profile"],
        report["tiles"],
        report["empty_tiles"],
        report["bytes"],
        report["bpp"],
        f"{report['ratio']:.1f}:1" if report["ratio"] else "-",
        report["ttft_steps"],
        report["ttft_seconds"],
        report["ttft_skipped_tiles"],
    )


# ---- ingest ----
@flow(name="ingest-raster", flow_run_name="ingest {source}", log_prints=True)
def ingest_raster(
    source: str, archive: str, options: IngestOptions = IngestOptions(), show_progress: bool = False
) -> dict:
    """Tile one raster (GeoTIFF, COG; a path or s3:// URL) and code each tile the archive lacks into
    it. S3 options and credentials come from the worker's environment (TTFT_STORAGE_OPTIONS and
    the AWS variables), never from parameters the UI shows."""
    options = options.with_steps()
    get_run_logger().info(
        "ingesting %s into %s (task %s, %d TTFT steps per tile)", source, archive, options.task, options.ttft_steps
    )
    job = raster_jobs.plan_raster(source, archive, options, storage_options=storage_options_from_env())
    report = _code_item(job, codec_setup.job_settings(options).orchestration, show_progress)
    _summary_table(report, source)
    _log_report(report)
    return {k: report[k] for k in SUMMARY_COLUMNS}


@flow(name="ingest-dicom-series", flow_run_name="ingest {source}", log_prints=True)
def ingest_dicom_series(
    source: str, archive: str, options: IngestOptions = IngestOptions(), show_progress: bool = False
) -> list[dict]:
    """The DICOM series of a file or folder, one item each (settings preset ``ct`` unless the
    options name another); storage as for ingest-raster."""
    options = options.model_copy(update={"preset": options.preset or "ct"}).with_steps()
    get_run_logger().info("ingesting the DICOM series in %s into %s (task %s)", source, archive, options.task)
    jobs = dicom_jobs.plan_dicom([source], archive, options, storage_options=storage_options_from_env())
    orchestration = codec_setup.job_settings(options).orchestration
    reports = []
    for job in jobs:
        report = _code_item(job, orchestration, show_progress)
        _summary_table(report, f"series {report['id']}")
        _log_report(report)
        reports.append({k: report[k] for k in SUMMARY_COLUMNS})
    return reports


@flow(name="ingest-inbox", flow_run_name="inbox {inbox}", log_prints=True)
def ingest_inbox(
    inbox: str, archive: str, options: IngestOptions = IngestOptions(), settle_seconds: float = 60.0
) -> list[dict]:
    """Ingest every raster and DICOM folder of a folder or s3:// prefix that this archive has not
    ingested in its present form; each is recorded in the archive once its items are complete."""
    from ttft_archive.adapters.archive import Archive
    from ttft_archive.adapters.inbox import local_folder, scan_inbox

    log = get_run_logger()
    storage = storage_options_from_env()
    entries = scan_inbox(inbox, storage, settle=settle_seconds)
    ledger = Archive(archive, storage)
    new = [e for e in entries if (ledger.inbox_record(e.source) or {}).get("fingerprint") != e.fingerprint]
    log.info("inbox %s: %d entries, %d new or changed", inbox, len(entries), len(new))
    reports = []
    for entry in new:
        if entry.kind == "raster":
            done = [ingest_raster(entry.source, archive, options)]
        else:
            folder, tmp = local_folder(entry, storage)
            try:
                done = ingest_dicom_series(folder, archive, options)
            finally:
                if tmp:
                    tmp.cleanup()
        ledger.record_inbox(entry.source, entry.fingerprint, [r["id"] for r in done])
        reports += done
    create_markdown_artifact(
        f"### Inbox `{inbox}`\n\n{len(entries)} entries seen, {len(new)} ingested into `{archive}`:\n\n"
        + "\n".join(f"- `{Path(e.source).name}` ({e.kind})" for e in new),
        key=artifact_key("inbox", Path(inbox).name or "inbox"),
        description="what the inbox run ingested",
    )
    return reports


# ---- query ----
@flow(name="query-decode", flow_run_name="query {item}/{task}", log_prints=True)
def query_decode(
    archive: str,
    item: str,
    out: str,
    task: str = "pixel",
    bbox: list[float] | None = None,
    crs: str | None = None,
    slices: str | None = None,
) -> dict:
    """Decode a window (``bbox`` in ``crs``, by default the item's CRS) of a raster item to a
    Cloud-Optimized GeoTIFF, or a slice range ('A:B') of a DICOM series to a folder of DICOM files.
    ``out`` is a path on the worker, or an s3:// URL: written there locally, then uploaded with the
    worker's TTFT_STORAGE_OPTIONS, so a remote worker's output reaches the caller."""
    result = query_item(
        archive, item, out, task, tuple(bbox) if bbox else None, crs, slices, storage_options_from_env()
    )
    get_run_logger().info("query of %s/%s: %s, %d tiles decoded", item, task, result["returned"], result["tiles_read"])
    create_markdown_artifact(
        f"### Query of `{item}` / `{task}`\n\nReturned {result['returned']}, decoded from {result['tiles_read']} "
        f"tiles of `{archive}`.",
        key=artifact_key("query", item, task),
        description="what the query returned",
    )
    return result


# ---- training ----
@flow(name="train-base-codec", flow_run_name="train {job.codec_id}", log_prints=True)
def train_base_codec(job: TrainBaseJob) -> str | None:
    """Train a base codec. Resumable: a run restarted (by a retry, or the next schedule) carries on
    from its checkpoint. Returns the exported card's path, if the job exports."""
    from ttft_archive.flows.training.base_codec import run

    job = job.model_copy(update={"command": job.command or f"prefect flow train-base-codec {job.codec_id}"})
    path = run(job, log=get_run_logger().info)
    return str(path) if path else None


# ---- evaluation ----
@flow(name="evaluate", log_prints=True)
def evaluate(
    task: str,
    data: str = "kodak",
    count: int = 4,
    size: int = 256,
    ttft_steps: int = 40,
    open_from: str | None = None,
    variants: list[str] | None = None,
    preset: str | None = None,
    plot_dir: str | None = None,
    device: str | None = None,
) -> dict:
    """Rate-task curves and BD tables (flows.evaluation.evaluate); the run shows the table and where the plot is."""
    from ttft_archive.flows.evaluation import evaluate as evaluation

    log = get_run_logger()
    chosen = tuple(variants) if variants else evaluation.LEARNED + evaluation.CLASSICAL
    result = evaluation.evaluate(
        task,
        data,
        count=count,
        size=size,
        ttft_steps=ttft_steps,
        open_from=open_from,
        variants=chosen,
        preset=preset,
        log=log.info,
        device=device,
    )
    rows = [
        {
            k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in row.items()
            if k not in ("points", "per_image_bd_rate_percent")
        }
        | {"points": "/".join(map(str, row["points"]))}
        for row in result["table"]
    ]
    create_table_artifact(
        rows,
        key=artifact_key("eval", task, data),
        description=f"BD-rate (%) and BD-{result['metric']} of {task} on {result['description']}",
    )
    plot_note = ""
    if plot_dir:
        path = Path(plot_dir) / f"eval_{task}_{data}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        evaluation.plot(result, path)
        # inline too, so the run page shows the curves wherever the file is
        encoded = base64.b64encode(path.read_bytes()).decode()
        plot_note = f"\n\n![rate-task curves](data:image/png;base64,{encoded})\n\nRD plot: `{path}`"
    curves = "\n".join(
        f"- {name}: " + ", ".join(f"{p['bpp']:.3f} bpp / {p['metric']:.3f}" for p in points)
        for name, points in result["curves"].items()
    )
    create_markdown_artifact(
        f"### {task} on {result['description']}\n\n{curves}{plot_note}",
        key=artifact_key("eval-curves", task, data),
        description="rate-task curves",
    )
    return result


@flow(name="train-task-adapter", flow_run_name="train {job.codec}--{job.task}", log_prints=True)
def train_task_adapter(job: TrainAdapterJob) -> str:
    """Stage 1 for one task and codec (flows.training.task_adapter); resumable like the base
    codec's. Returns the adapter's path in the store."""
    from ttft_archive.flows.training.task_adapter import run

    job = job.model_copy(update={"command": job.command or f"prefect flow train-task-adapter {job.task}"})
    return str(run(job, log=get_run_logger().info))
