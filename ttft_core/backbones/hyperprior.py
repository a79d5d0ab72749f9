"""CNN backbone: the mean-scale hyperprior of Minnen et al. 2018 (CompressAI's layer layout),
with the image channel count as a parameter, and its checkerboard-context variant (the same
transforms, y coded in two halves: checkerboard.py). SVD-LoRA adapts the four convolutions of g_a
and the four transposed convolutions of g_s."""

from __future__ import annotations

from compressai.layers import GDN
from compressai.models.utils import conv, deconv
from torch import nn

from .base import BackboneConfig, LoRATargets, MeanScaleCodec


class HyperpriorCodec(MeanScaleCodec):
    lora_targets = LoRATargets(
        encoder=["g_a.0", "g_a.2", "g_a.4", "g_a.6"], decoder=["g_s.0", "g_s.2", "g_s.4", "g_s.6"]
    )

    def __init__(self, config: BackboneConfig, context: bool = False):
        C, N, M = config.channels, config.N, config.M
        g_a = nn.Sequential(conv(C, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))
        g_s = nn.Sequential(
            deconv(M, N),
            GDN(N, inverse=True),
            deconv(N, N),
            GDN(N, inverse=True),
            deconv(N, N),
            GDN(N, inverse=True),
            deconv(N, C),
        )
        super().__init__(config, g_a, g_s, context=context)


def checkerboard_codec(config: BackboneConfig) -> HyperpriorCodec:
    return HyperpriorCodec(config, context=True)
