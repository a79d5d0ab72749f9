"""Quantise and entropy-code the decoder's singular values, the only adapter data a tile sends.

What is sent is k = round((s - s_ref) / step), s_ref being the stage-1 values both sides hold.
The integers are coded with CompressAI's rANS coder under one zero-mean Gaussian whose scale is
picked from a fixed table (its index travels in the tile header). The same Gaussian gives the
differentiable bit count that test-time fine-tuning adds to its loss.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from compressai.entropy_models import GaussianConditional
from torch import Tensor

# log-spaced scales from "nearly all zero" to "large moves in small steps"; larger moves still
# decode exactly (the coder escapes values beyond a table's range), they just cost more bits
SCALE_TABLE = tuple(math.exp(x) for x in torch.linspace(math.log(0.11), math.log(1024.0), 48).tolist())
_MIN_SCALE = SCALE_TABLE[0]


@lru_cache(maxsize=1)
def shared_coder() -> "SingularValueCoder":
    """Building the tables takes a noticeable fraction of a second: build them once a process."""
    return SingularValueCoder()


class SingularValueCoder:
    def __init__(self) -> None:
        self._gc = GaussianConditional(list(SCALE_TABLE))
        self._gc.update()

    @staticmethod
    def scale_index(symbols: Tensor) -> int:
        """The table entry nearest (in log) to the symbols' RMS; computed by the encoder only."""
        rms = math.sqrt(float((symbols.double() ** 2).mean())) if symbols.numel() else 0.0
        rms = max(rms, _MIN_SCALE)
        return min(range(len(SCALE_TABLE)), key=lambda i: abs(math.log(SCALE_TABLE[i]) - math.log(rms)))

    def encode(self, symbols: Tensor) -> tuple[int, bytes]:
        if symbols.numel() == 0:
            return 0, b""
        index = self.scale_index(symbols)
        values = symbols.reshape(1, -1).float()
        indexes = torch.full(values.shape, index, dtype=torch.int32)
        return index, self._gc.compress(values, indexes)[0]

    def decode(self, data: bytes, count: int, index: int) -> Tensor:
        if count == 0:
            return torch.zeros(0, dtype=torch.int32)
        indexes = torch.full((1, count), index, dtype=torch.int32)
        return self._gc.decompress([data], indexes).reshape(-1).round().int()


def quantize(s: Tensor, s_ref: Tensor, step: float) -> Tensor:
    return torch.round((s.detach() - s_ref) / step).int()


def dequantize(symbols: Tensor, s_ref: Tensor, step: float) -> Tensor:
    return s_ref + symbols.to(s_ref.dtype) * step


def estimated_bits(s: Tensor, s_ref: Tensor, step: float, generator: torch.Generator | None = None) -> Tensor:
    """Differentiable bits for the singular values: uniform noise (from ``generator``, or the global
    RNG) stands in for rounding, as for the latents, under the Gaussian the encoder would choose.
    The noise is drawn on the CPU, so a seeded generator gives the same draws on every device."""
    v = (s - s_ref) / step
    noise = torch.empty(v.shape, dtype=v.dtype).uniform_(-0.5, 0.5, generator=generator)
    return _gaussian_bits(v + noise.to(v.device))


@torch.no_grad()
def coded_bits(s: Tensor, s_ref: Tensor, step: float) -> Tensor:
    """The bits of the rounded symbols that ``encode`` would send (up to its scale table's spacing)."""
    return _gaussian_bits(quantize(s, s_ref, step).float())


def _gaussian_bits(v: Tensor) -> Tensor:
    scale = v.detach().pow(2).mean().sqrt().clamp_min(_MIN_SCALE)
    normal = torch.distributions.Normal(0.0, scale)
    p = normal.cdf(v.abs() + 0.5) - normal.cdf(v.abs() - 0.5)
    return -torch.log2(p.clamp_min(1e-9)).sum()
