"""Tiles to bytes and back: a backbone, its optional stage-1 adapter, and their identities."""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from torch.nn import functional as F

from . import bitstream, lora
from .backbones import SPATIAL_MULTIPLE, LatentStrings, MeanScaleCodec
from .backbones.base import LoRATargets
from .digest import base_weights, tensors_digest
from .errors import BitstreamError, TTFTError
from .singular_values import dequantize, quantize, shared_coder
from .value_window import ValueWindow

DEFAULT_S_STEP = 1.0 / 64


def attach_adapter(
    model: MeanScaleCodec,
    state: dict[str, Tensor] | None = None,
    config: lora.LoRAConfig = lora.LoRAConfig(),
    targets: LoRATargets | None = None,
) -> MeanScaleCodec:
    """Inject SVD-LoRA into g_a and g_s where the backbone says (or ``targets`` narrow it), then
    load a saved adapter state if one is given. The hyperprior and entropy models stay as they are."""
    if any(True for _ in lora.lora_layers(model)):
        raise TTFTError("the codec already has an adapter attached")
    targets = targets or model.lora_targets
    for side, patterns, prefix in (("encoder", targets.encoder, "g_a."), ("decoder", targets.decoder, "g_s.")):
        if not all(p.startswith(prefix) for p in patterns):
            raise TTFTError(f"{side} adapter patterns must lie inside {prefix[:-1]}: {patterns}")
        lora.inject(model, patterns, side, config)
    if state is not None:
        lora.load_adapter_state(model, state)
    return model


def pad_tile(tile: Tensor) -> Tensor:
    """(C, H, W) -> (1, C, H', W') with H', W' the next multiples of 64, edges replicated."""
    _, h, w = tile.shape
    pad_h, pad_w = (-h) % SPATIAL_MULTIPLE, (-w) % SPATIAL_MULTIPLE
    x = tile[None]
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x


class TileCodec:
    """Compresses (C, H, W) tiles in [0, 1] into self-describing byte strings, and back.

    ``adapter_id`` names the stage-1 adapter already attached to ``model`` (None: the base codec).
    Entropy-coder tables loaded with the weights are used as they are, so every machine decodes
    with the very tables the encoder used; a model without tables gets them built here. After
    changing base weights in memory, call ``model.update(force=True)`` before building a TileCodec.
    ``windowed``: the jobs stretch each tile by its own value window (ttft_core.value_window)
    before coding it; decoding follows whatever each bitstream says, so any codec reads both.
    Not thread-safe: decoding sets the model's decoder singular values from each bitstream.
    """

    def __init__(
        self,
        model: MeanScaleCodec,
        codec_id: str,
        adapter_id: str | None = None,
        s_step: float = DEFAULT_S_STEP,
        windowed: bool = False,
    ):
        has_adapter = any(True for _ in lora.lora_layers(model))
        if (adapter_id is None) == has_adapter:
            raise TTFTError("adapter_id must name the adapter attached to the model, and only then")
        if any(layer.merged for _, layer in lora.lora_layers(model)):
            raise TTFTError("unmerge the adapter before building a TileCodec: the digest needs base weights")
        self.model = model.eval()
        self.codec_id = codec_id
        self.adapter_id = adapter_id
        self.s_step = float(s_step)
        self.windowed = windowed
        model.update(force=False)
        self.codec_digest = tensors_digest(base_weights(model))
        self.stage1_state = lora.adapter_state(model)
        self.adapter_digest = tensors_digest(self.stage1_state) if has_adapter else bytes(32)
        self.reference_s = lora.decoder_singular_values(model) if has_adapter else torch.zeros(0)
        self._sv_coder = shared_coder()
        self._tuning_copies: dict[torch.device, MeanScaleCodec] = {}

    @property
    def channels(self) -> int:
        return self.model.config.channels

    def tuning_model(self, device: torch.device) -> MeanScaleCodec:
        """The model that test-time fine-tuning runs on ``device``: this codec's own on the CPU,
        elsewhere a copy made once. Tuning reads its adapters from lora.per_tile and changes neither
        model; coding stays on the CPU model, so bytes never depend on where tuning ran."""
        if device.type == "cpu":
            return self.model
        if device not in self._tuning_copies:
            self._tuning_copies[device] = copy.deepcopy(self.model).to(device)
        return self._tuning_copies[device]

    def check_tile(self, tile: Tensor) -> Tensor:
        if not isinstance(tile, Tensor) or tile.dim() != 3:
            raise TTFTError(f"a tile must be a (channels, height, width) tensor, got {getattr(tile, 'shape', tile)!r}")
        if tile.shape[0] != self.channels:
            raise TTFTError(f"codec {self.codec_id!r} takes {self.channels} channels, the tile has {tile.shape[0]}")
        if not tile.is_floating_point() or not torch.isfinite(tile).all():
            raise TTFTError("a tile must hold finite floating-point values in [0, 1]")
        return tile.float().clamp(0, 1)

    def window_of(self, tile: Tensor) -> ValueWindow | None:
        """The value window this codec codes ``tile`` in: its own when ``windowed``, else none (as
        for a tile that already spans [0, 1]: that window would cost bytes and change nothing)."""
        if not self.windowed:
            return None
        window = ValueWindow.of(self.check_tile(tile))
        return None if window.is_identity else window

    def compress(
        self,
        tile: Tensor,
        tuned_state: dict[str, Tensor] | None = None,
        latents: Tensor | None = None,
        window: ValueWindow | None = None,
    ) -> bytes:
        """Encode a tile with the stage-1 adapter, or with ``tuned_state`` from test-time fine-tuning;
        ``latents`` (TTFTResult.latents) are coded in place of what the encoder makes of the tile.
        With a ``window`` the tile is stretched by it first, and the bitstream carries it."""
        tile = self.check_tile(tile)
        if window is not None:
            tile = window.stretch(tile)
        if self.adapter_id is not None:
            lora.load_adapter_state(self.model, tuned_state or self.stage1_state)
        elif tuned_state:
            raise TTFTError("a tuned adapter state was given to a codec without an adapter")
        x = pad_tile(tile)
        strings, _ = self.model.compress_latents(x, latents)
        symbols = quantize(lora.decoder_singular_values(self.model), self.reference_s, self.s_step)
        s_index, s_bytes = self._sv_coder.encode(symbols)
        header = bitstream.TileHeader(
            codec_id=self.codec_id,
            codec_sha256=self.codec_digest,
            adapter_id=self.adapter_id,
            adapter_sha256=self.adapter_digest,
            channels=self.channels,
            height=tile.shape[1],
            width=tile.shape[2],
            padded_height=x.shape[2],
            padded_width=x.shape[3],
            s_step=self.s_step,
            s_scale_index=s_index,
            s_count=symbols.numel(),
            z_shape=strings.z_shape,
            window=window,
        )
        data = bitstream.pack(bitstream.TilePayload(header, s_bytes, strings.z, strings.y))
        if self.adapter_id is not None:
            lora.load_adapter_state(self.model, self.stage1_state)
        return data

    def decompress(self, data: bytes) -> Tensor:
        payload = bitstream.unpack(data)
        h = payload.header
        self._check_identity(h)
        if self.adapter_id is not None:
            symbols = self._sv_coder.decode(payload.s_bytes, h.s_count, h.s_scale_index)
            lora.set_decoder_singular_values(self.model, dequantize(symbols, self.reference_s, h.s_step))
        try:
            y_hat = self.model.decompress_latents(LatentStrings(payload.y_bytes, payload.z_bytes, h.z_shape))
        except (RuntimeError, ValueError) as exc:  # shapes that the header promised but the coder refuses
            raise BitstreamError(f"tile latents do not decode: {exc}") from None
        x_hat = self.model.synthesize(y_hat)
        if x_hat.shape[-2:] != (h.padded_height, h.padded_width):
            raise BitstreamError(
                f"tile decodes to {tuple(x_hat.shape[-2:])}, header says {(h.padded_height, h.padded_width)}"
            )
        x_hat = x_hat[0, :, : h.height, : h.width]
        return h.window.restore(x_hat) if h.window is not None else x_hat

    def _check_identity(self, h: bitstream.TileHeader) -> None:
        if h.codec_id != self.codec_id or h.codec_sha256 != self.codec_digest:
            raise BitstreamError(
                f"tile was coded by codec {h.codec_id!r} ({h.codec_sha256.hex()[:12]}), "
                f"not by {self.codec_id!r} ({self.codec_digest.hex()[:12]}) that is decoding it"
            )
        if h.adapter_id != self.adapter_id or (self.adapter_id and h.adapter_sha256 != self.adapter_digest):
            raise BitstreamError(
                f"tile was coded with adapter {h.adapter_id!r} ({h.adapter_sha256.hex()[:12]}), "
                f"the decoder holds {self.adapter_id!r} ({self.adapter_digest.hex()[:12]})"
            )
        if h.channels != self.channels:
            raise BitstreamError(f"tile has {h.channels} channels, codec {self.codec_id!r} has {self.channels}")
        padded = (h.padded_height, h.padded_width)
        if any(p % SPATIAL_MULTIPLE or p < n for p, n in zip(padded, (h.height, h.width))):
            raise BitstreamError(f"tile header gives padding {padded} that does not fit a {h.height}x{h.width} tile")
        if h.z_shape != (padded[0] // SPATIAL_MULTIPLE, padded[1] // SPATIAL_MULTIPLE):
            raise BitstreamError(f"tile header gives hyper-latent shape {h.z_shape} for padded size {padded}")
        if self.adapter_id is not None and h.s_count != self.reference_s.numel():
            raise BitstreamError(
                f"tile carries {h.s_count} singular values, the adapter has {self.reference_s.numel()}"
            )
