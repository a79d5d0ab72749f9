"""Storage faults: a proxy between s3fs and a moto server on 127.0.0.1 answers a share of the
requests with 500 or 503, holds some past the client's read timeout, and drops some connections
unanswered. With retries set in the storage options an ingest completes and equals a clean one;
with the endpoint dead it fails in one line; run again once the storage is back, it completes."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ..s3_server import _free_port, moto_s3
from .common import FAST, cli, crop_raster, state

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class FaultyProxy(ThreadingHTTPServer):
    """Forwards every request to ``upstream``; a ``rate`` share of them fails instead, in turn a
    500, a 503 (S3's SlowDown), a response held ``hold`` seconds then dropped, and a connection
    closed without an answer."""

    daemon_threads = True

    def __init__(self, upstream: str, rate: float, seed: int, hold: float = 1.2):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream, self.rate, self.hold = upstream, rate, hold
        self.random, self.lock = random.Random(seed), threading.Lock()
        self.faults = {"500": 0, "503": 0, "timeout": 0, "drop": 0}
        self.forwarded = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def draw(self) -> str | None:
        with self.lock:
            if self.random.random() >= self.rate:
                self.forwarded += 1
                return None
            fault = self.random.choice(list(self.faults))
            self.faults[fault] += 1
            return fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _any(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.server.draw()
        if fault in ("500", "503"):
            code, name = (500, "InternalError") if fault == "500" else (503, "SlowDown")
            payload = f"<Error><Code>{name}</Code><Message>injected</Message></Error>".encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if fault in ("timeout", "drop"):
            if fault == "timeout":
                time.sleep(self.server.hold)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        host, port = self.server.upstream.removeprefix("http://").split(":")
        upstream = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream.request(
            self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None, headers=headers
        )
        response = upstream.getresponse()
        payload = response.read()
        self.send_response(response.status)
        for k, v in response.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any


@contextmanager
def faulty(upstream: str, rate: float, seed: int):
    proxy = FaultyProxy(upstream, rate, seed)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def through(options: dict, endpoint: str, attempts: int) -> dict:
    """The storage options with another endpoint, botocore's retries and short timeouts."""
    config = {"retries": {"max_attempts": attempts, "mode": "standard"}, "read_timeout": 1, "connect_timeout": 1}
    return options | {"client_kwargs": {"endpoint_url": endpoint}, "config_kwargs": config}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return crop_raster(tmp_path_factory.mktemp("source") / "scene.tif")


def test_an_ingest_through_failing_storage_completes_with_retries(monkeypatch, source, seed=0):
    with moto_s3() as (options, bucket):
        endpoint = options["client_kwargs"]["endpoint_url"]
        monkeypatch.setenv("TTFT_STORAGE_OPTIONS", json.dumps(options))
        assert cli("ingest", source, "--archive", f"s3://{bucket}/clean", *FAST)[0] == 0
        clean = state(f"s3://{bucket}/clean", options)
        with faulty(endpoint, rate=0.1, seed=seed) as proxy:
            retrying = through(options, proxy.url, attempts=10)
            monkeypatch.setenv("TTFT_STORAGE_OPTIONS", json.dumps(retrying))
            code, out, err = cli("ingest", source, "--archive", f"s3://{bucket}/faulty", *FAST)
            assert code == 0, err
            assert sum(proxy.faults.values()) >= 5 and all(proxy.faults.values()), proxy.faults
            code, out, err = cli("ls", "--archive", f"s3://{bucket}/faulty")
            assert code == 0 and "complete" in out, err
        assert state(f"s3://{bucket}/faulty", options) == clean


def test_a_dead_endpoint_fails_in_one_line_and_a_rerun_completes(monkeypatch, source):
    dead = f"http://127.0.0.1:{_free_port()}"
    with moto_s3() as (options, bucket):
        monkeypatch.setenv("TTFT_STORAGE_OPTIONS", json.dumps(options))
        assert cli("ingest", source, "--archive", f"s3://{bucket}/clean", *FAST)[0] == 0
        clean = state(f"s3://{bucket}/clean", options)
        monkeypatch.setenv("TTFT_STORAGE_OPTIONS", json.dumps(through(options, dead, attempts=2)))
        for command in (
            ("ingest", source, "--archive", f"s3://{bucket}/a", *FAST),
            ("ls", "--archive", f"s3://{bucket}/a"),
            ("verify", "--archive", f"s3://{bucket}/a"),
            ("query", "--archive", f"s3://{bucket}/a", "--item", "scene", "--out", "unused.tif"),
        ):
            code, out, err = cli(*command)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
            assert lines[0].startswith(f"ttft: error: s3://{bucket}/a: storage") and dead in lines[0], lines
        # the storage fails midway: every request after the first few is refused
        with faulty(options["client_kwargs"]["endpoint_url"], rate=0.0, seed=0) as proxy:
            monkeypatch.setenv("TTFT_STORAGE_OPTIONS", json.dumps(through(options, proxy.url, attempts=2)))
            original = proxy.draw
            proxy.draw = lambda: original() if proxy.forwarded < 12 else "drop"
            code, out, err = cli("ingest", source, "--archive", f"s3://{bucket}/a", *FAST)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and "storage" in lines[0] and "Traceback" not in err, err
        monkeypatch.setenv("TTFT_STORAGE_OPTIONS", json.dumps(options))
        code, out, err = cli("ingest", source, "--archive", f"s3://{bucket}/a", *FAST)
        assert code == 0, err
        assert state(f"s3://{bucket}/a", options) == clean
