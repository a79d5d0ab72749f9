"""Keep decoding arithmetic identical whatever the thread count.

The scale index of each latent comes from the hyper-synthesis h_s: if the decoder computes a
scale that lands on the other side of a table boundary than the encoder did, the rANS stream
decodes to garbage. Float64 on one thread makes that arithmetic independent of the thread count.

The synthesis g_s only shapes the pixels, but an archive should give back the same pixels on
every read: oneDNN's (transposed) convolutions were seen to change in the last bits between one
and two threads, PyTorch's native kernels were not (2-3x slower on small maps, measured on the
decoders here), so synthesis runs with oneDNN off.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

_lock = threading.Lock()


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    with _lock:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


@contextlib.contextmanager
def thread_count_independent() -> Iterator[None]:
    # set_flags with only `enabled`: the flags() context also resets TF32 and warns about it
    before = torch.backends.mkldnn.set_flags(False, None, None, None)
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(before[0], None, None, None)
