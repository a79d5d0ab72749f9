"""A tile's value window: each channel's own range in the item's [0, 1], stretched to the whole
of [0, 1] before coding and mapped back after decoding.

An item maps to [0, 1] once (a 16-bit band by its maximum over the scene, say), so a tile of a
dark field or of water uses a sliver of the range. The rgb family is trained on photographs that
span most of it, and codes a tile better in the range it knows: on Landsat tiles the window takes
the hyperprior from -6.6% to -18.6% BD-rate against JPEG 2000 (docs/evaluation.md). The gray16
family learned CT and bands at their own dark levels, and loses with a window, so a codec's
family decides whether its tiles get one.

The bounds are multiples of 1/65535 (two u16 per channel in the tile bitstream), the low one
rounded down and the high one up, so the stretched tile stays in [0, 1]. A window is never
narrower than MIN_WIDTH: a nearly flat tile (still water, a dark field, sensor noise of a few
levels) stretched to the whole range would spend bytes on its noise. Landsat tiles span 0.15 to
0.7 of a scene's mapping, well above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import BitstreamError

LEVELS = 65535
MIN_WIDTH = 4096  # in steps of 1/LEVELS: a tile is stretched 16 times at most


@dataclass(frozen=True)
class ValueWindow:
    low: tuple[int, ...]  # per channel, in steps of 1/LEVELS
    high: tuple[int, ...]

    def __post_init__(self):
        if len(self.low) != len(self.high):
            raise BitstreamError(f"value window of {len(self.low)} low and {len(self.high)} high bounds")
        for lo, hi in zip(self.low, self.high):
            if not 0 <= lo < hi <= LEVELS:
                raise BitstreamError(f"value window [{lo}, {hi}] is not an interval of [0, {LEVELS}]")

    @classmethod
    def of(cls, tile: Tensor) -> ValueWindow:
        """The window of a (C, H, W) tile in [0, 1]: each channel's lowest and highest value."""
        flat = tile.detach().double().flatten(1).clamp(0, 1)
        return cls.spanning(flat.amin(1).tolist(), flat.amax(1).tolist())

    @classmethod
    def spanning(cls, lows, highs) -> ValueWindow:
        """The window of a tile whose channels run from ``lows`` to ``highs`` in [0, 1]: what
        ``of`` gives for it, known from its range alone (a scan of the item)."""
        bounds = [
            _at_least(math.floor(_unit(lo) * LEVELS), math.ceil(_unit(hi) * LEVELS)) for lo, hi in zip(lows, highs)
        ]
        return cls(tuple(lo for lo, _ in bounds), tuple(hi for _, hi in bounds))

    @property
    def is_identity(self) -> bool:
        return all(lo == 0 and hi == LEVELS for lo, hi in zip(self.low, self.high))

    @property
    def squared_width(self) -> float:
        """The mean over channels of the window's squared width: how much smaller a squared error
        is in the item's values than in the stretched ones."""
        return sum(((hi - lo) / LEVELS) ** 2 for lo, hi in zip(self.low, self.high)) / len(self.low)

    def _bounds(self, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (len(self.low), 1, 1)
        low = torch.tensor(self.low, dtype=torch.float64) / LEVELS
        width = torch.tensor(self.high, dtype=torch.float64) / LEVELS - low
        return low.reshape(shape).to(like), width.reshape(shape).to(like)

    def stretch(self, tile: Tensor) -> Tensor:
        """(C, H, W) or (N, C, H, W) from the item's [0, 1] to the window's."""
        low, width = self._bounds(tile)
        return ((tile - low) / width).clamp(0, 1)

    def restore(self, x: Tensor) -> Tensor:
        """The inverse of ``stretch``: a decoded (stretched) tile back to the item's [0, 1]."""
        low, width = self._bounds(x)
        return low + width * x


def shared_weight(windows: list[ValueWindow]) -> float:
    """One weight for the task loss of all of an item's tiles, each tuned in its own window: the
    inverse of their windows' mean squared width. Each tile weighed by its own inverse (as in its
    stretched values) spends bytes as if every tile held the item's whole contrast, the same
    trade-off in the stretched values but not in the item's: a low-contrast tile's bytes then buy
    less of the item's error than a high-contrast one's. One weight gives every tile the same
    trade-off in the item's values, where its fidelity is judged, at about the rate of before."""
    if not windows:
        raise ValueError("no windows to share a weight")
    return 1.0 / (sum(w.squared_width for w in windows) / len(windows))


def _unit(value) -> float:
    return min(max(float(value), 0.0), 1.0)


def _at_least(low: int, high: int) -> tuple[int, int]:
    """[low, high] widened about its middle to MIN_WIDTH where narrower, kept inside [0, LEVELS]."""
    if high - low >= MIN_WIDTH:
        return low, high
    low = min(max(0, (low + high - MIN_WIDTH) // 2), LEVELS - MIN_WIDTH)
    return low, low + MIN_WIDTH
