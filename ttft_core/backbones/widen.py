"""A hyperprior codec widened: more channels in its transforms (N) and latents (M), coding as the
narrower codec did until it is trained.

The shipped points are `hyperprior-small` (N 64, M 96), and from q4 up their synthesis stops
below JPEG 2000 whatever the rate (docs/evaluation.md, "Where the top rate points stop"): the
width is the limit. Trained from scratch, a wider codec needs far more steps than the narrow
ones had to come back to where they are; widened, it starts there.

Every layer keeps the narrow codec's weights in its leading channels. A new channel's outputs
start at zero (its output weights and bias zero), so GDN, its inverse and the leaky ReLUs keep
it at zero and the next layer, whose weights from it start as built (random), sees nothing from
it until training moves it: the gradient reaches it through those weights. New latent channels
are zero with a mean of zero and the smallest scale, new hyper-latent channels zero under a
density narrow about zero, so they cost a fraction of a bit a tile.
"""

from __future__ import annotations

import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from torch import Tensor, nn

from ..errors import TTFTError
from .base import BackboneConfig, MeanScaleCodec

NEW_DENSITY_SCALE = 0.05  # the width of a new hyper-latent channel's density at the start


@torch.no_grad()
def widen(wide: MeanScaleCodec, narrow: MeanScaleCodec) -> None:
    """Load ``narrow``'s weights into ``wide``, a hyperprior codec of the same backbone and
    channels with at least its N and M, as described above. ``wide`` is built, not trained."""
    small, large = narrow.config, wide.config
    if not widens(small, large):
        raise TTFTError(
            f"a {large.backbone} codec of N {large.N}, M {large.M} does not widen this {small.backbone} codec "
            f"of N {small.N}, M {small.M}: only a hyperprior codec of the same channels and at least its N and M does"
        )
    for big, little in ((wide.g_a, narrow.g_a), (wide.g_s, narrow.g_s), (wide.h_a, narrow.h_a)):
        for layer, old in zip(big, little):
            _widen_layer(layer, old)
    for layer, old in zip(wide.h_s[:-1], narrow.h_s[:-1]):
        _widen_layer(layer, old)
    # h_s ends in the scales of y then its means: each half keeps its own channels
    M0, M1 = small.M, large.M
    _widen_layer(wide.h_s[-1], narrow.h_s[-1], torch.cat([torch.arange(M0), M1 + torch.arange(M0)]))
    _widen_density(wide.entropy_bottleneck, narrow.entropy_bottleneck)
    wide.update()


def widens(small: BackboneConfig, large: BackboneConfig) -> bool:
    """Whether a codec of ``large`` widens one of ``small``: both hyperprior codecs of the same
    channels, with at least its N and M."""
    return (
        small.backbone == large.backbone == "hyperprior"
        and small.channels == large.channels
        and large.N >= small.N
        and large.M >= small.M
    )


def _widen_layer(layer: nn.Module, old: nn.Module, outputs: Tensor | None = None) -> None:
    if isinstance(layer, GDN):
        n = old.beta.shape[0]
        layer.beta[:n] = old.beta.to(layer.beta)
        layer.gamma[:n, :n] = old.gamma.to(layer.gamma)  # a new channel's own terms stay as built (no cross terms)
    elif isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
        _widen_convolution(layer, old, outputs)
    elif any(True for _ in layer.parameters()):
        raise TTFTError(f"cannot widen a {type(layer).__name__} layer")


def _widen_convolution(layer: nn.Module, old: nn.Module, outputs: Tensor | None) -> None:
    """``old``'s weights at ``outputs`` (its output channels' places; default the leading ones)
    and its leading inputs; every other output channel starts at zero."""

    def by_output(w: Tensor) -> Tensor:  # (out, in, kh, kw): a transposed convolution keeps (in, out, ...)
        return w.transpose(0, 1) if isinstance(layer, nn.ConvTranspose2d) else w

    weight, old_weight = by_output(layer.weight), by_output(old.weight).to(layer.weight)
    outputs = (torch.arange(old_weight.shape[0]) if outputs is None else outputs).to(weight.device)
    kept = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
    kept[outputs] = True
    weight[~kept] = 0
    weight[outputs, : old_weight.shape[1]] = old_weight
    layer.bias[~kept] = 0
    layer.bias[outputs] = old.bias.to(layer.bias)


def _widen_density(wide: EntropyBottleneck, old: EntropyBottleneck) -> None:
    """``old``'s per-channel densities in the leading channels; the new ones narrow about zero
    (biases zero: symmetric, median zero), so a zero hyper-latent costs next to nothing."""
    n, new = old.channels, wide.channels - old.channels
    narrow = EntropyBottleneck(new, init_scale=NEW_DENSITY_SCALE, filters=wide.filters) if new else None
    for name, param in wide.named_parameters():
        param[:n] = old.get_parameter(name).to(param)
        if narrow is not None:
            param[n:] = 0 if name.startswith("biases") else narrow.get_parameter(name).to(param)
