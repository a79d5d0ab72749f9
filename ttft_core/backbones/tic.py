"""TIC (Lu et al., "Transformer-based image compression", DCC 2022), the seed paper's backbone:
strided convolutions with a residual Swin transformer block between each pair in g_a and g_s,
and a mean-scale hyperprior. SVD-LoRA adapts the attention qkv and proj linears of g_a and g_s."""

from __future__ import annotations

from compressai.models.utils import conv, deconv
from torch import nn

from ..errors import TTFTError
from .base import BackboneConfig, LoRATargets, MeanScaleCodec
from .swin import RSTB


class TICCodec(MeanScaleCodec):
    lora_targets = LoRATargets(
        encoder=["g_a.*.attn.qkv", "g_a.*.attn.proj"], decoder=["g_s.*.attn.qkv", "g_s.*.attn.proj"]
    )

    def __init__(self, config: BackboneConfig):
        C, N, M = config.channels, config.N, config.M
        if len(config.depths) != 3 or len(config.heads) != 3:
            raise TTFTError(f"tic needs 3 Swin stages (depths, heads), got {config.depths}, {config.heads}")

        def stage(dim: int, i: int) -> RSTB:
            return RSTB(dim, config.depths[i], config.heads[i], config.window, config.mlp_ratio)

        g_a = nn.Sequential(
            conv(C, N, 5, 2),
            stage(N, 0),
            conv(N, N, 3, 2),
            stage(N, 1),
            conv(N, N, 3, 2),
            stage(N, 2),
            conv(N, M, 3, 2),
        )
        g_s = nn.Sequential(
            stage(M, 2),
            deconv(M, N, 3, 2),
            stage(N, 1),
            deconv(N, N, 3, 2),
            stage(N, 0),
            deconv(N, N, 3, 2),
            deconv(N, C, 5, 2),
        )
        super().__init__(config, g_a, g_s)
