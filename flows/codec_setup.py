"""Choosing and preparing the codec a job uses: shipped id, family + quality, or a backbone size."""

from __future__ import annotations

from adapters.zoo import codec_for_quality, default_codec_id, open_codec
from configs import Settings
from ttft_core import TileCodec, TTFTConfig, attach_adapter

ZERO_ADAPTER = "zero"  # open-set start: an adapter at zero that both sides rebuild from its seed


def channels_for(codec: str | None, bands: int) -> int:
    """How many bands a codec codes at once: a shipped codec's card says; otherwise groups of three
    (RGB) when the bands split that way, else one band at a time (the gray16 family)."""
    from adapters.zoo import list_codecs

    cards = {e.codec_id: e.card for e in list_codecs()}
    if codec in cards:
        return int(cards[codec]["backbone"]["channels"])
    return 3 if bands % 3 == 0 else 1


def resolve_codec_name(settings: Settings, codec: str | None, quality: int | None, channels: int) -> str:
    family = settings.codec.family if channels == 3 else "gray16"
    if quality is not None:
        return codec_for_quality(family, quality)
    return codec or settings.codec.codec or default_codec_id(family) or "hyperprior-small"


def prepare(settings: Settings, name: str, channels: int, ttft_steps: int) -> tuple[TileCodec, TTFTConfig | None, dict | None]:
    """The TileCodec (with the zero adapter when TTFT runs), its TTFT config and the codec card."""
    model, codec_id, card = open_codec(name, channels=channels)
    if model.config.channels != channels:
        from ttft_core import TTFTError

        raise TTFTError(f"codec {codec_id!r} codes {model.config.channels} channels, the data has {channels}")
    if ttft_steps:
        attach_adapter(model, config=settings.lora.to_core())
    codec = TileCodec(model, codec_id, ZERO_ADAPTER if ttft_steps else None, s_step=settings.codec.s_step)
    ttft = settings.ttft.to_core(codec_lambda=card["lambda"] if card else None) if ttft_steps else None
    return codec, ttft, card
