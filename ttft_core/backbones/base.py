"""The mean-scale hyperprior codec that both backbones share; they differ in g_a and g_s only."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch

with warnings.catch_warnings():
    # compressai decorates with torch.jit.script, which torch now deprecates: a warning for its authors
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.models import CompressionModel
    from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from ..determinism import single_thread, thread_count_independent
from ..errors import TTFTError

# g_a halves four times and h_a twice more: tiles are padded to a multiple of this.
SPATIAL_MULTIPLE = 64
Y_STRIDE = 16  # g_a downsamples by 16 in every backbone (z by another 4)


@dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to rebuild an architecture; stored in codec cards and checkpoints."""

    backbone: str
    channels: int = 3
    N: int = 128
    M: int = 192
    # TIC only: Swin stages of g_a (and, reversed, of g_s), heads and window size
    depths: tuple[int, ...] = (2, 4, 6)
    heads: tuple[int, ...] = (8, 8, 8)
    window: int = 8
    mlp_ratio: float = 2.0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneConfig":
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class LatentStrings:
    """What the entropy coder produced for one tile."""

    y: bytes
    z: bytes
    z_shape: tuple[int, int]


@dataclass
class LoRATargets:
    encoder: list[str] = field(default_factory=list)
    decoder: list[str] = field(default_factory=list)


class MeanScaleCodec(CompressionModel):
    """g_a -> y -> h_a -> z; z is coded with a factorized prior, y with a Gaussian whose mean and
    scale h_s predicts from z. Subclasses build g_a and g_s and say which layers LoRA adapts."""

    lora_targets: LoRATargets

    def __init__(self, config: BackboneConfig, g_a: nn.Module, g_s: nn.Module):
        super().__init__()
        N, M = config.N, config.M
        self.config = config
        self.g_a = g_a
        self.g_s = g_s
        self.h_a = nn.Sequential(
            conv(M, N, kernel_size=3, stride=1),
            nn.LeakyReLU(inplace=True),
            conv(N, N),
            nn.LeakyReLU(inplace=True),
            conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, M),
            nn.LeakyReLU(inplace=True),
            deconv(M, M * 3 // 2),
            nn.LeakyReLU(inplace=True),
            conv(M * 3 // 2, M * 2, kernel_size=3, stride=1),
        )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        # A float64 copy of h_s for the coding path, built by update(). Kept out of the module
        # tree so that it is not part of the state dict, the weights digest or .to(device).
        object.__setattr__(self, "_h_s_exact", None)

    # ---- training-time path (differentiable, noisy quantisation in train mode) ----
    def forward(self, x: Tensor) -> dict:
        y = self.g_a(x)
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales, means = self.h_s(z_hat).chunk(2, 1)
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales, means=means)
        if not self.training:
            # eval mode rounds with no gradient; a straight-through estimator keeps g_a trainable
            y_hat = y + (y_hat - y).detach()
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    # ---- coding path ----
    def update(self, scale_table=None, force: bool = True, update_quantiles: bool = False) -> bool:
        """Rebuild the integer coder tables. Forced by default: CompressAI's unforced update
        silently keeps stale tables after new weights are loaded."""
        updated = super().update(scale_table=scale_table, force=force, update_quantiles=update_quantiles)
        object.__setattr__(self, "_h_s_exact", copy.deepcopy(self.h_s).cpu().double().eval())
        return updated

    def _entropy_parameters(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        if self._h_s_exact is None:
            raise TTFTError("the codec's entropy tables are not built: call update() after loading weights")
        with torch.no_grad(), single_thread():
            scales, means = self._h_s_exact(z_hat.cpu().double()).chunk(2, 1)
        return scales.float().to(z_hat.device), means.float().to(z_hat.device)

    @torch.no_grad()
    def compress_latents(self, x: Tensor, y: Tensor | None = None) -> tuple[LatentStrings, Tensor]:
        """Entropy-code one padded tile (1, C, H, W), or its latents ``y`` when given (refined ones);
        returns the strings and the decoded y_hat.

        The strings are decoded again here, the way a reader will, and must give back the very
        symbols that were coded."""
        if x.shape[0] != 1:
            raise TTFTError(f"compress_latents codes one tile at a time, got a batch of {x.shape[0]}")
        if y is None:
            y = self.g_a(x)
        elif y.shape != (1, self.config.M, x.shape[2] // Y_STRIDE, x.shape[3] // Y_STRIDE):
            raise TTFTError(f"latents of shape {tuple(y.shape)} do not belong to a padded tile of {tuple(x.shape)}")
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_shape = tuple(z.shape[-2:])
        z_hat = self.entropy_bottleneck.decompress(z_strings, z_shape)
        scales, means = self._entropy_parameters(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_strings = self.gaussian_conditional.compress(y, indexes, means=means)
        symbols = self.gaussian_conditional.quantize(y, "symbols", means)
        strings = LatentStrings(y=y_strings[0], z=z_strings[0], z_shape=z_shape)
        y_hat = self.decompress_latents(strings)
        if not torch.equal(torch.round(y_hat - means).int(), symbols):
            raise RuntimeError("entropy coder self-check failed: decoded latents differ from the coded ones")
        return strings, y_hat

    @torch.no_grad()
    def decompress_latents(self, strings: LatentStrings) -> Tensor:
        z_hat = self.entropy_bottleneck.decompress([strings.z], strings.z_shape)
        scales, means = self._entropy_parameters(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scales)
        return self.gaussian_conditional.decompress([strings.y], indexes, means=means)

    @torch.no_grad()
    def synthesize(self, y_hat: Tensor) -> Tensor:
        with thread_count_independent():
            return self.g_s(y_hat).clamp_(0, 1)
