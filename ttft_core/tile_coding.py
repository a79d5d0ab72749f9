"""Tune, compress, decode, measure: what every job does to a tile, written once. The ingest, the
round trip and the evaluation call this; they differ only in what they keep of the result."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

from torch import Tensor

from .tasks import Task
from .tile_codec import TileCodec
from .ttft import TTFTConfig, TTFTResult, compress_tuned, finetune_batch

# A slot the tuning waits for and holds (an orchestrator's concurrency limit); coding needs none.
TuningSlot = Callable[[], ContextManager]


@dataclass
class CodedTile:
    data: bytes  # the tile's bitstream: its real bytes
    x_hat: Tensor  # the decoding of those bytes
    fidelity: float  # the task's metric of x_hat against the tile
    result: TTFTResult | None  # None: no tuning
    encode_seconds: float  # compression, not counting the tuning (TTFTResult.seconds)
    decode_seconds: float

    @property
    def ttft_steps(self) -> int:
        return self.result.steps_run if self.result else 0

    @property
    def ttft_seconds(self) -> float:
        return self.result.seconds if self.result else 0.0


def code_tiles(
    codec: TileCodec,
    tiles: list[Tensor],
    tasks: list[Task],
    config: TTFTConfig | None,
    tuning_slot: TuningSlot = contextlib.nullcontext,
) -> tuple[list[CodedTile], tuple[float, float] | None]:
    """Tiles of one shape, each for its own task: tuned together in one batch when ``config`` asks
    for tuning (inside ``tuning_slot``), then each one's bytes, their decoding and its task metric.
    Also returns when the tuning held its slot (epoch seconds), None without tuning."""
    results, slot = [None] * len(tiles), None
    if config:
        with tuning_slot():
            started = time.time()
            results = finetune_batch(codec, tiles, [task.loss for task in tasks], config)
            slot = (started, time.time())
    coded = []
    for tile, task, result in zip(tiles, tasks, results):
        started = time.perf_counter()
        data = compress_tuned(codec, tile, result)
        encoded = time.perf_counter()
        x_hat = codec.decompress(data)
        decoded = time.perf_counter()
        coded.append(CodedTile(data, x_hat, task.metric(x_hat, tile), result, encoded - started, decoded - encoded))
    return coded, slot
