"""What a tile worker keeps between tiles: open sources and prepared codecs, one set per thread.

Tile tasks run on threads (Prefect's default runner) or on Dask worker processes. A codec's
adapter is trained in place during TTFT and an open rasterio dataset is not thread-safe, so
neither may be shared between threads; a few recent ones are kept per thread so that the next tile
of the same item does not reload them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, TypeVar

T = TypeVar("T")
_local = threading.local()
KEEP = 4  # per kind and thread: enough for the items one worker codes at a time


def per_thread(kind: str, key: str, make: Callable[[], T]) -> T:
    caches = _local.__dict__.setdefault("caches", {})
    cache: OrderedDict = caches.setdefault(kind, OrderedDict())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    while len(cache) > KEEP:
        _, old = cache.popitem(last=False)
        if hasattr(old, "close"):
            old.close()
    return value


def clear() -> None:
    """Close what this thread holds (tests, and a worker between items)."""
    for cache in _local.__dict__.pop("caches", {}).values():
        for value in cache.values():
            if hasattr(value, "close"):
                value.close()
