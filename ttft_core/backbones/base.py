"""The mean-scale hyperprior codec that both backbones share; they differ in g_a and g_s only."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch

with warnings.catch_warnings():
    # compressai decorates with torch.jit.script, which torch now deprecates: a warning for its authors
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from compressai.ans import BufferedRansEncoder, RansDecoder
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.models import CompressionModel
    from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from ..determinism import single_thread, thread_count_independent
from ..errors import TTFTError
from .checkerboard import CheckerboardContext, anchor_mask

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
class _Half:
    """One half of a checkerboard: where it lies in (H, W) and its (C, K) scales and means."""

    mask: Tensor
    scales_means: tuple[Tensor, Tensor]


@dataclass
class LoRATargets:
    encoder: list[str] = field(default_factory=list)
    decoder: list[str] = field(default_factory=list)


def _round_straight_through(y: Tensor, means: Tensor) -> Tensor:
    """y rounded around ``means`` as the coder rounds it, with the gradient of the identity for y."""
    return y + (torch.round(y - means.detach()) + means.detach() - y).detach()


class MeanScaleCodec(CompressionModel):
    """g_a -> y -> h_a -> z; z is coded with a factorized prior, y with a Gaussian whose mean and
    scale h_s predicts from z (and, with a ``context``, from the decoded checkerboard anchors too).
    Subclasses build g_a and g_s and say which layers LoRA adapts."""

    lora_targets: LoRATargets

    def __init__(self, config: BackboneConfig, g_a: nn.Module, g_s: nn.Module, context: bool = False):
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
        self.context = CheckerboardContext(M) if context else None
        # Float64 copies of h_s and the context for the coding path, built by update(). Kept out of
        # the module tree so that they are not part of the state dict, the weights digest or .to(device).
        object.__setattr__(self, "_h_s_exact", None)
        object.__setattr__(self, "_context_exact", None)

    def gaussian_parameters(self, y: Tensor, hyper: Tensor) -> tuple[Tensor, Tensor]:
        """(scales, means) of y from h_s's output, differentiable: with a context, the anchors are
        rounded as the coder rounds them (straight through) before the others see them."""
        if self.context is None:
            return hyper.chunk(2, 1)
        return self.context.parameters_for(y, hyper, _round_straight_through).chunk(2, 1)

    @torch.no_grad()
    def scale_latents(self, gain: float) -> None:
        """Code ``gain`` * y in place of y: the coder's unit rounding step becomes 1 / gain of the old
        y, a higher rate and fidelity from the same transforms before any training (the gain units
        of Cui et al. 2021, one gain for every channel). g_a's last layer and h_s's (scales and means)
        are multiplied by the gain, h_a's and g_s's first layers divided by it, so that z and the
        synthesis see y as before."""
        if self.context is not None:
            raise TTFTError("scale_latents is for codecs without a checkerboard context")
        last_a, first_s = self.g_a[-1], self.g_s[0]
        if not (isinstance(last_a, nn.Conv2d) and isinstance(first_s, nn.ConvTranspose2d)):
            raise TTFTError(f"scale_latents needs g_a to end in a convolution ({self.config.backbone})")
        for layer in (last_a, self.h_s[-1]):
            layer.weight.mul_(gain)
            layer.bias.mul_(gain)
        for layer in (self.h_a[0], first_s):
            layer.weight.div_(gain)

    # ---- training-time path (differentiable, noisy quantisation in train mode) ----
    def forward(self, x: Tensor) -> dict:
        y_hat, likelihoods = self.latents(x)
        return {"x_hat": self.g_s(y_hat), "likelihoods": likelihoods}

    def latents(self, x: Tensor) -> tuple[Tensor, dict]:
        """(y_hat, the likelihoods of y and z): the forward pass short of the synthesis."""
        y = self.g_a(x)
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales, means = self.gaussian_parameters(y, self.h_s(z_hat))
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales, means=means)
        if not self.training:
            # eval mode rounds with no gradient; a straight-through estimator keeps g_a trainable
            y_hat = y + (y_hat - y).detach()
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    # ---- coding path ----
    def update(self, scale_table=None, force: bool = True, update_quantiles: bool = False) -> bool:
        """Rebuild the integer coder tables. Forced by default: CompressAI's unforced update
        silently keeps stale tables after new weights are loaded."""
        updated = super().update(scale_table=scale_table, force=force, update_quantiles=update_quantiles)
        object.__setattr__(self, "_h_s_exact", copy.deepcopy(self.h_s).cpu().double().eval())
        if self.context is not None:
            object.__setattr__(self, "_context_exact", copy.deepcopy(self.context).cpu().double().eval())
        return updated

    def _hyper_exact(self, z_hat: Tensor) -> Tensor:
        """h_s's output in float64 on one CPU thread: what the scale indexes are built from on
        both sides of the coder, so that no machine picks another table (determinism.py)."""
        if self._h_s_exact is None:
            raise TTFTError("the codec's entropy tables are not built: call update() after loading weights")
        with torch.no_grad(), single_thread():
            return self._h_s_exact(z_hat.cpu().double())

    def _exact(self, make_parameters, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        """(scales, means) in float32 from a float64 context network run on one CPU thread."""
        with torch.no_grad(), single_thread():
            scales, means = make_parameters(*(t.cpu().double() for t in inputs)).chunk(2, 1)
        return scales.float(), means.float()

    def _code_y(self, y: Tensor, z_hat: Tensor) -> tuple[bytes, Tensor]:
        """y's byte string and the y_hat a decoder will get from it."""
        gc = self.gaussian_conditional
        hyper = self._hyper_exact(z_hat)
        if self.context is None:
            scales, means = (t.float() for t in hyper.chunk(2, 1))
            string = gc.compress(y.cpu(), gc.build_indexes(scales), means=means)[0]
            return string, gc.quantize(y.cpu(), "dequantize", means)
        encoder, tables = BufferedRansEncoder(), self._coder_tables()
        y_hat = torch.zeros_like(y.cpu())
        for half in self._checkerboard_halves(hyper, y_hat):
            scales, means = half.scales_means
            symbols = gc.quantize(y.cpu()[0][:, half.mask], "symbols", means)
            encoder.encode_with_indexes(
                symbols.reshape(-1).tolist(), gc.build_indexes(scales).reshape(-1).tolist(), *tables
            )
            y_hat[0][:, half.mask] = gc.dequantize(symbols, means)
        return encoder.flush(), y_hat

    def _decode_y(self, string: bytes, z_hat: Tensor) -> Tensor:
        gc = self.gaussian_conditional
        hyper = self._hyper_exact(z_hat)
        if self.context is None:
            scales, means = (t.float() for t in hyper.chunk(2, 1))
            return gc.decompress([string], gc.build_indexes(scales), means=means)
        decoder, tables = RansDecoder(), self._coder_tables()
        decoder.set_stream(string)
        y_hat = torch.zeros(1, self.config.M, *hyper.shape[-2:])
        for half in self._checkerboard_halves(hyper, y_hat):
            scales, means = half.scales_means
            indexes = gc.build_indexes(scales).reshape(-1).tolist()
            symbols = torch.tensor(decoder.decode_stream(indexes, *tables), dtype=torch.int32)
            y_hat[0][:, half.mask] = gc.dequantize(symbols.reshape(means.shape), means)
        return y_hat

    def _checkerboard_halves(self, hyper: Tensor, y_hat: Tensor):
        """The anchors' half, then the others': each with its mask and (C, K) scales and means.
        The second is computed when asked for, from the anchors the caller has written into y_hat."""
        anchors = anchor_mask(*hyper.shape[-2:])
        first = self._exact(self._context_exact.anchor_parameters, hyper)
        yield _Half(anchors, tuple(t[0][:, anchors] for t in first))
        anchors_hat = torch.where(anchors, y_hat, torch.zeros_like(y_hat))
        second = self._exact(self._context_exact.context_parameters, hyper, anchors_hat)
        yield _Half(~anchors, tuple(t[0][:, ~anchors] for t in second))

    def _coder_tables(self) -> tuple[list, list, list]:
        gc = self.gaussian_conditional
        return gc.quantized_cdf.tolist(), gc.cdf_length.reshape(-1).int().tolist(), gc.offset.reshape(-1).int().tolist()

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
        y_string, coded_y_hat = self._code_y(y, z_hat)
        strings = LatentStrings(y=y_string, z=z_strings[0], z_shape=z_shape)
        y_hat = self.decompress_latents(strings)
        if not torch.equal(y_hat, coded_y_hat):
            raise RuntimeError("entropy coder self-check failed: decoded latents differ from the coded ones")
        return strings, y_hat.to(x.device)

    @torch.no_grad()
    def decompress_latents(self, strings: LatentStrings) -> Tensor:
        z_hat = self.entropy_bottleneck.decompress([strings.z], strings.z_shape)
        return self._decode_y(strings.y, z_hat)

    @torch.no_grad()
    def synthesize(self, y_hat: Tensor) -> Tensor:
        with thread_count_independent():
            return self.g_s(y_hat).clamp_(0, 1)
