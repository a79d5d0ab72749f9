"""The backbone registry: architectures by name, built from a BackboneConfig."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..errors import TTFTError
from .base import SPATIAL_MULTIPLE, BackboneConfig, LatentStrings, MeanScaleCodec
from .hyperprior import HyperpriorCodec, checkerboard_codec
from .tic import TICCodec
from .widen import widen

_REGISTRY: dict[str, Callable[[BackboneConfig], MeanScaleCodec]] = {}

# Sizes that have a name: the paper's TIC, and variants small enough to fine-tune on a CPU.
PRESETS: dict[str, dict] = {
    "hyperprior": dict(backbone="hyperprior", N=128, M=192),
    "hyperprior-small": dict(backbone="hyperprior", N=64, M=96),
    "checkerboard-small": dict(backbone="checkerboard", N=64, M=96),
    "tic": dict(backbone="tic", N=128, M=192, depths=(2, 4, 6), heads=(8, 8, 8), window=8),
    "tic-small": dict(backbone="tic", N=64, M=96, depths=(1, 2, 2), heads=(4, 4, 4), window=8),
}


def register(name: str) -> Callable:
    def wrap(builder: Callable[[BackboneConfig], MeanScaleCodec]):
        _REGISTRY[name] = builder
        return builder

    return wrap


register("hyperprior")(HyperpriorCodec)
register("tic")(TICCodec)
register("checkerboard")(checkerboard_codec)


def registered() -> list[str]:
    return sorted(_REGISTRY)


def build(config: BackboneConfig) -> MeanScaleCodec:
    if config.backbone not in _REGISTRY:
        raise TTFTError(f"unknown backbone {config.backbone!r}; registered: {', '.join(registered())}")
    if config.channels < 1:
        raise TTFTError(f"a codec needs at least one channel, got {config.channels}")
    return _REGISTRY[config.backbone](config)


def grow_from_hyperprior(model: MeanScaleCodec, hyperprior: MeanScaleCodec) -> None:
    """Load a hyperprior codec's weights into the checkerboard codec of its size: everything but
    the context, which stays as built (at its start it codes as the hyperprior alone)."""
    if hyperprior.config.backbone != "hyperprior" or model.config != replace(
        hyperprior.config, backbone="checkerboard"
    ):
        raise TTFTError(
            f"a {model.config.backbone} codec does not grow from this {hyperprior.config.backbone} codec: "
            "only the checkerboard codec of a hyperprior's size does"
        )
    missing, unexpected = model.load_state_dict(hyperprior.state_dict(), strict=False)
    if unexpected or any(not k.startswith("context.") for k in missing):
        raise TTFTError(f"the hyperprior's weights do not fit the checkerboard codec: {unexpected or missing}")


def preset(name: str, channels: int = 3) -> BackboneConfig:
    if name not in PRESETS:
        raise TTFTError(f"unknown backbone size {name!r}; known: {', '.join(sorted(PRESETS))}")
    return BackboneConfig(channels=channels, **PRESETS[name])


__all__ = [
    "BackboneConfig",
    "LatentStrings",
    "MeanScaleCodec",
    "SPATIAL_MULTIPLE",
    "build",
    "grow_from_hyperprior",
    "preset",
    "register",
    "registered",
    "widen",
    "PRESETS",
]
