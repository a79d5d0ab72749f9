"""Against real services on 127.0.0.1: a `prefect server start` subprocess, a process work pool whose
worker runs a deployment of this source tree end to end into an archive on a moto S3 server, `ttft
serve` registering the deployments, and a headless Chromium looking at the run in the Prefect UI."""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, SAMPLES
from .prefect_server import PREFECT, prefect_env, prefect_server, stop
from .s3_server import moto_s3

POOL = "test-process"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-server")
    with prefect_server(home) as api_url, temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield {"api_url": api_url, "ui_url": api_url.removesuffix("/api"), "home": home}
    strays = _strays(api_url, str(tmp_path_factory.getbasetemp()))
    assert not strays, f"processes left running: {strays}"


def _strays(api_url: str, tmp: str, grace: float = 5.0) -> list[str]:
    """Processes of this module still alive: anything pointed at this server (server, workers, flow
    runs, `ttft serve`) or working in this test run's temporary folders (Chromium)."""
    import psutil

    deadline = time.monotonic() + grace
    while True:
        found = []
        for proc in psutil.process_iter():
            try:
                env, cmd = proc.environ(), " ".join(proc.cmdline())
            except (psutil.Error, OSError):
                continue
            if proc.pid != os.getpid() and (api_url in env.values() or tmp in cmd):
                found.append(f"{proc.pid} {cmd[:120]}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


async def _create_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=name, type="process"), overwrite=True)


async def _run_and_artifacts(flow_run_id) -> tuple:
    """The run, and the artifacts of it and of its subflow runs (the tile tasks may sit in one)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas import filters as f

    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        parent = f.FlowRunFilterParentFlowRunId(any_=[flow_run_id])
        children = await client.read_flow_runs(flow_run_filter=f.FlowRunFilter(parent_flow_run_id=parent))
        ids = [flow_run_id] + [c.id for c in children]
        of_runs = f.ArtifactFilter(flow_run_id=f.ArtifactFilterFlowRunId(any_=ids))
        artifacts = await client.read_artifacts(artifact_filter=of_runs)
    return run, artifacts


@pytest.fixture(scope="module")
def deployed_run(server, tmp_path_factory):
    """One run of an `ingest-raster` deployment of this source tree, picked up by a process worker and
    written to an archive on S3. The worker is configured like a deployed one: the S3 endpoint and
    keys are in its environment, not in the deployment's parameters."""
    from prefect import Flow
    from prefect.deployments import run_deployment

    from ttft_archive.flows.jobs.tiles import listing

    asyncio.run(_create_pool(POOL))
    flow = Flow.from_source(source=str(ROOT), entrypoint="flows/orchestration/prefect_flows.py:ingest_raster")
    with moto_s3() as (options, bucket):
        archive = f"s3://{bucket}/archive.zarr"
        parameters = {
            "source": str(SAMPLES / "landsat8_224078_rgb_crop256.tif"),
            "archive": archive,
            "options": {"codec": "hyperprior-small", "tile": 128, "ttft_steps": 0},
        }
        flow.deploy(name="e2e", work_pool_name=POOL, parameters=parameters, print_next_steps=False)
        run = run_deployment("ingest-raster/e2e", timeout=0)  # scheduled now, for the worker to pick up

        home = tmp_path_factory.mktemp("worker")
        started = time.monotonic()
        with open(home / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--run-once"],
                cwd=home,
                env=prefect_env(home, server["api_url"], TTFT_STORAGE_OPTIONS=json.dumps(options)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                worker.wait(150)  # --run-once: one poll, then it waits for the runs it submitted
            except subprocess.TimeoutExpired:
                pass
            finally:
                stop(worker)
        seconds = time.monotonic() - started
        flow_run, artifacts = asyncio.run(_run_and_artifacts(run.id))
        yield {
            "run": flow_run,
            "artifacts": artifacts,
            "items": listing(archive, options),
            "seconds": seconds,
            "worker_log": (home / "worker.log").read_text(errors="replace"),
        }


def test_deployment_runs_on_a_process_worker_into_s3(deployed_run):
    run = deployed_run["run"]
    assert run.state.is_completed(), f"{run.state}\n{deployed_run['worker_log'][-3000:]}"
    assert run.work_pool_name == POOL and run.deployment_id is not None
    [item] = deployed_run["items"]
    [profile] = item["profiles"]
    assert item["id"] == "landsat8_224078_rgb_crop256"
    assert profile["complete"] and profile["tiles"] == 4 and profile["bytes"] > 0
    kinds = {a.type: a for a in deployed_run["artifacts"]}
    assert float(kinds["progress"].data) == 100.0
    rows = json.loads(kinds["table"].data) if isinstance(kinds["table"].data, str) else kinds["table"].data
    row = {r["figure"]: r["value"] for r in rows}  # one row per figure, two columns
    assert row["id"] == item["id"] and row["bytes"] == profile["bytes"]  # the table reports what S3 holds
    print(f"deployment run on the process worker: {deployed_run['seconds']:.1f} s")


def test_ttft_serve_registers_the_deployments_with_the_inbox_cron(server, tmp_path):
    """`ttft serve` against the server: every deployment appears, the inbox one on the cron of the
    config (here from a YAML file), and Ctrl+C stops it cleanly."""
    from prefect.client.orchestration import get_client

    from ttft_archive.configs.settings import load_settings
    from ttft_archive.flows.orchestration.deployments import deployment_specs

    preset = tmp_path / "serve.yaml"
    preset.write_text(
        f"serve:\n  archive: {tmp_path / 'a.zarr'}\n  inbox:\n    path: {tmp_path / 'inbox'}\n"
        f"    cron: '7 3 * * 1'\n    ttft_steps: 2\n"
    )
    specs = deployment_specs(load_settings())
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ttft")), "serve", "--preset", str(preset)],
        env=prefect_env(tmp_path, server["api_url"]),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        deadline, found = time.monotonic() + 60, {}
        while time.monotonic() < deadline and proc.poll() is None:
            with get_client(sync_client=True) as client:
                # by module path: `ttft serve`'s own, not those prefect.yaml gives file paths
                found = {
                    d.entrypoint: d for d in client.read_deployments() if d.entrypoint.startswith("ttft_archive.flows.")
                }
            if len(found) == len(specs):
                break
            time.sleep(1)
        out = (tmp_path / "serve.log").read_text(errors="replace")
        assert sorted(found) == sorted(f"ttft_archive.flows.orchestration.prefect_flows.{s.function}" for s in specs), (
            out[-3000:]
        )
        inbox = found["ttft_archive.flows.orchestration.prefect_flows.ingest_inbox"]
        assert inbox.name == "scheduled"
        [schedule] = inbox.schedules
        assert schedule.schedule.cron == "7 3 * * 1" and schedule.active
        assert inbox.parameters["inbox"] == str(tmp_path / "inbox") and inbox.parameters["options"]["ttft_steps"] == 2
        assert f"Prefect UI: {server['ui_url']}" in out
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl+C sends: the runner pauses the schedules and exits
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        stop(proc)
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text(errors="replace")[-3000:]


def test_infra_setup_creates_the_pools_the_limit_and_the_deployments(server, tmp_path):
    """infra/setup.sh, what the compose stack's `setup` service runs, against the real server and an
    S3 endpoint: the bucket, pools `cpu` and `gpu`, the `gpu` concurrency limit, and `prefect deploy`
    of infra/prefect.yaml (which loads every flow and validates its parameters)."""
    import s3fs
    from prefect.client.orchestration import get_client

    from ttft_archive.flows.orchestration import prefect_flows

    config = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    with moto_s3() as (options, _):
        env = prefect_env(tmp_path, server["api_url"], TTFT_STORAGE_OPTIONS=json.dumps(options))
        done = subprocess.run(
            ["sh", str(ROOT / "infra" / "setup.sh")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert s3fs.S3FileSystem(**options).exists("ttft")
    with get_client(sync_client=True) as client:
        pools = {p.name: p.type for p in client.read_work_pools()}
        limit = client.read_global_concurrency_limit_by_name("gpu")
        deployed = {(client.read_flow(d.flow_id).name, d.name): d for d in client.read_deployments()}
    assert pools["cpu"] == pools["gpu"] == "process" and limit.limit == 1
    for d in config["deployments"]:
        flow_name = getattr(prefect_flows, d["entrypoint"].rsplit(":", 1)[1]).name
        got = deployed[(flow_name, d["name"])]
        assert got.work_pool_name == d["work_pool"]["name"] and got.entrypoint == d["entrypoint"]
        assert got.parameters == (d.get("parameters") or {})
        assert [s.schedule.cron for s in got.schedules] == [s["cron"] for s in d.get("schedules") or []]


def _chromium(url: str, png: Path, profile: Path) -> str:
    """Loads ``url`` in a headless Chromium until the page settles, saves a screenshot and returns the
    page's visible text (from the DOM the scripts built)."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1100",
        "--virtual-time-budget=10000",
        f"--screenshot={png}",
        "--dump-dom",
        url,
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90, start_new_session=True).stdout
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
)
def test_ui_shows_the_run_with_its_artifacts(server, deployed_run, tmp_path):
    """The flow-run page (Prefect's React UI under /v2, whose Artifacts tab is addressable by URL)
    names the run and shows its progress and table artifacts; the table's page shows its rows."""
    run, ui = deployed_run["run"], server["ui_url"]
    by_type = {a.type: a for a in deployed_run["artifacts"]}
    table, progress = by_type["table"], by_type["progress"]
    pages = {}
    for run_id in dict.fromkeys([table.flow_run_id, progress.flow_run_id]):
        png = tmp_path / f"flow_run_{run_id}.png"
        pages[run_id] = _chromium(f"{ui}/v2/runs/flow-run/{run_id}?tab=Artifacts", png, tmp_path / "chromium")
        assert png.stat().st_size > 20_000  # a rendered page, not a blank one
    table_page, progress_page = pages[table.flow_run_id], pages[progress.flow_run_id]
    assert run.name in table_page and "TABLE" in table_page and table.key in table_page
    assert "PROGRESS" in progress_page
    rows = _chromium(f"{ui}/v2/artifacts/artifact/{table.id}", tmp_path / "table.png", tmp_path / "chromium")
    row = {r["figure"]: r["value"] for r in (json.loads(table.data) if isinstance(table.data, str) else table.data)}
    for value in (row["id"], row["codec"], str(row["bytes"]), run.name):
        assert value in rows, f"{value!r} not on the table's page"
