"""The TTFT forward pass and its two costs, for a batch of tiles (ttft).

Mixed quantisation (Minnen & Singh, ICIP 2020), not the paper's noise everywhere: the rates that
give gradients are those of the latents plus uniform noise, as in training, but the synthesis
transform sees the latents rounded the way the coder rounds them (y around the predicted means,
z around the bottleneck's medians), with a straight-through gradient. Tuning on noisy latents
teaches the encoder a reconstruction the decoder never receives; measured on Landsat edges, that
gap cost more than TTFT gained (docs/method.md).

Each step also yields the cost of the state it ran with as it will be coded: the bits of the
rounded latents and rounded singular values under the very distributions that code them, plus
lambda times the task loss of the rounded reconstruction. That is deterministic and close to the
real bytes, so the best step is picked on it rather than on a noisy draw.

Noise comes from one generator per tile, z's first and then y's (then the singular values'),
each in (C, H, W) order and drawn on the CPU, so a tile's run is the same alone or inside a batch,
and draws the same noise on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .backbones import MeanScaleCodec


@dataclass
class StepBits:
    """Bits per tile of one forward pass: ``trained`` (noisy, differentiable) and ``coded``
    (rounded, as the entropy coder will spend them; no gradient); and ``coded_x_hat``, the
    reconstruction of the rounded latents where the pass's own x_hat is not it (SGA), else None."""

    trained: Tensor
    coded: Tensor
    coded_x_hat: Tensor | None = None


def tile_seeds(seed: int | None, n: int) -> list[int]:
    """Every tile gets ``seed``; without one, seeds drawn from the global RNG."""
    if seed is not None:
        return [seed] * n
    return [int(v) for v in torch.randint(0, 2**62, (n,))]


def uniform_rows(
    like: Tensor, row_shape: tuple[int, ...], low: float, high: float, gens: list[torch.Generator]
) -> Tensor:
    """Uniform draws in [low, high), one row of ``row_shape`` per tile, row b drawn from gens[b] on
    the CPU, stacked and moved to ``like``'s device in its dtype."""
    rows = [torch.empty(row_shape, dtype=like.dtype).uniform_(low, high, generator=g) for g in gens]
    return torch.stack(rows).to(like.device)


def noise_like(t: Tensor, gens: list[torch.Generator]) -> Tensor:
    """Uniform noise in [-0.5, 0.5) for a batch ``t``, row b drawn from gens[b]."""
    return uniform_rows(t, t.shape[1:], -0.5, 0.5, gens)


def mixed_forward(model: MeanScaleCodec, x: Tensor, gens: list[torch.Generator]) -> tuple[StepBits, Tensor]:
    """(bits per tile, x_hat) for a batch of padded tiles, tile b's noise from gens[b].

    The likelihoods are CompressAI's own (``_likelihood`` and the lower bound)."""
    return latents_forward(model, model.g_a(x), gens)


def latents_forward(
    model: MeanScaleCodec, y: Tensor, gens: list[torch.Generator], temperature: float | None = None
) -> tuple[StepBits, Tensor]:
    """``mixed_forward`` from the latents y on: what refining the latents themselves descends.

    With a ``temperature``, y is rounded by stochastic Gumbel annealing instead (``sga_round``):
    the rate and the synthesis both see the one relaxed draw."""
    z = model.h_a(y)
    eb = model.entropy_bottleneck
    z_noisy = z + noise_like(z, gens)
    z_round = eb.quantize(z, "dequantize", eb._get_medians())
    z_hat = z + (z_round - z).detach()
    scales, means = model.gaussian_parameters(y, model.h_s(z_hat))
    y_round = torch.round(y - means) + means
    coded_x_hat = None
    if temperature is None:
        y_noisy = y + noise_like(y, gens)
        y_hat = y + (y_round - y).detach()
    else:
        y_noisy = y_hat = sga_round(y - means, temperature, gens) + means
        with torch.no_grad():  # the relaxed draw is not what the decoder will receive
            coded_x_hat = model.g_s(y_round)
    trained = _z_bits(model, z_noisy) + _y_bits(model, y_noisy, scales, means)
    with torch.no_grad():
        coded = _z_bits(model, z_round) + _y_bits(model, y_round, scales, means)
    return StepBits(trained, coded, coded_x_hat), model.g_s(y_hat)


def sga_round(v: Tensor, temperature: float, gens: list[torch.Generator]) -> Tensor:
    """Stochastic Gumbel annealing (Yang, Bamler & Mandt, NeurIPS 2020): v relaxed towards its
    floor or its ceiling, a Gumbel-softmax draw between the two whose odds favour the nearer
    (logits -atanh(distance) / temperature). As the temperature falls, the draw hardens into
    rounding, so the latents end where the coder's rounding serves them, which a straight-through
    gradient does not see. Tile b's Gumbel noise comes from gens[b], drawn on the CPU."""
    floor = torch.floor(v).detach()
    down = (v - floor).clamp(1e-6, 1.0 - 1e-6)  # atanh is infinite at 1
    logits = -torch.atanh(torch.stack([down, 1.0 - down])) / temperature
    # two draws per element, in (0, 1): (B, 2, ...) as drawn per tile, read as (2, B, ...)
    gumbel = -torch.log(-torch.log(uniform_rows(v, (2, *v.shape[1:]), 1e-9, 1.0, gens).transpose(0, 1)))
    weights = torch.softmax((logits + gumbel) / temperature, dim=0)
    return floor + weights[1]


def _z_bits(model: MeanScaleCodec, z: Tensor) -> Tensor:
    eb = model.entropy_bottleneck
    c, n = z.shape[1], z.shape[0]
    lik, _, _ = eb._likelihood(z.transpose(0, 1).reshape(c, 1, -1))  # CompressAI's (C, 1, N) layout
    if eb.use_likelihood_bound:
        lik = eb.likelihood_lower_bound(lik)
    return -torch.log2(lik).reshape(c, n, -1).sum((0, 2))


def _y_bits(model: MeanScaleCodec, y: Tensor, scales: Tensor, means: Tensor) -> Tensor:
    gc = model.gaussian_conditional
    lik = gc._likelihood(y, scales, means)
    if gc.use_likelihood_bound:
        lik = gc.likelihood_lower_bound(lik)
    return -torch.log2(lik).flatten(1).sum(1)
