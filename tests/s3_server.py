"""A real S3 endpoint on 127.0.0.1 (moto's threaded server) for tests that are about S3."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_s3(bucket: str = "archive") -> Iterator[dict]:
    """Yields fsspec storage options for s3://BUCKET on a fresh local moto server."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        options = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir(bucket)
        yield options
    finally:
        server.stop()
