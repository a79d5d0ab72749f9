"""A real S3 endpoint on 127.0.0.1 (moto's threaded server) for tests that are about S3."""

from __future__ import annotations

import socket
import uuid
from contextlib import contextmanager
from typing import Iterator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_s3() -> Iterator[tuple[dict, str]]:
    """Yields fsspec storage options and a new bucket's name on a local moto server. Moto keeps
    its buckets in process-wide memory, so each use gets a bucket name of its own."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        # a fresh filesystem object each time: fsspec caches instances, and a port can come back
        options = {
            "key": "test",
            "secret": "test",
            "skip_instance_cache": True,
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
        }
        fs = s3fs.S3FileSystem(**options)
        bucket = f"archive-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        yield options, bucket
    finally:
        server.stop()
