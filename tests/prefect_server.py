"""A real Prefect server on 127.0.0.1 (`prefect server start` in a subprocess, SQLite in a temporary
home) and a worker beside it, for tests that are about deployments, workers and the UI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .s3_server import _free_port

PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect_env(home: Path, api_url: str | None = None, **extra: str) -> dict:
    """The environment of a Prefect process of the test: its own home (profiles, UI build, database),
    no analytics, no API URL of the user's own profile leaking in, and this interpreter's scripts
    (prefect, ttft, python) first on the PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "OMP_NUM_THREADS": "1",
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env | extra


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the process group the test started (the process and its own children), then
    SIGKILL to what is still there after ``grace`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    try:  # children that outlived their parent in the same group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def prefect_server(home: Path, timeout: float = 90.0) -> Iterator[str]:
    """Yields the API URL of a fresh server (SQLite under ``home``); its UI is at the URL without /api."""
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(
        home,
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_UI_API_URL=api_url,
    )
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(api_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not come up: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield api_url
    finally:
        stop(proc)
        log.close()
