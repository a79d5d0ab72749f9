"""Random training crops from a list of images, held in memory, reproducible from a seed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ttft_archive.ttft_core.errors import TTFTError

LEVEL_GAIN_MIN = 0.25  # the narrowest random window of a leveled crop


def levels_note(share: float, gain_min: float = LEVEL_GAIN_MIN) -> str:
    """What a card says of level-augmented training."""
    return (
        f"levels: {share:g} of the crops leveled, half of those as their negative, each in a random window "
        f"offset + gain * x of [0, 1], gain {gain_min:g} to 1"
    )


class CropSampler:
    """Images are kept as ``read`` returns them (uint8 for 8-bit sets) and crops are divided by
    ``scale`` into [0, 1] floats. Each crop comes from an image drawn uniformly, or with
    ``by_area`` in proportion to its pixels: a set that mixes many small CT slices with a few large
    raster bands then sees every pixel equally often, not every file.

    With ``levels`` (a share, for one-channel sets), that share of the crops is leveled: half of
    them turned to their negative, each then in a random window of [0, 1], ``offset + gain * x``
    with gain ``gain_min`` (0.25) to 1. A single-channel codec then meets the levels of every mapping an archive
    gives it (a radiograph's bright background, a window that fills the range), not only the dark
    ones of CT and raster bands (without it, the gray16 family decodes flat regions above 0.6 up
    to 0.1 off their level: benchmarks/level_bias.py)."""

    def __init__(
        self,
        files: list[Path],
        read: Callable[[Path], torch.Tensor],
        crop: int,
        seed: int,
        scale: float = 255.0,
        by_area: bool = False,
        levels: float = 0.0,
        gain_min: float = LEVEL_GAIN_MIN,
    ):
        self.images = [img for img in (read(f) for f in files) if min(img.shape[-2:]) >= crop]
        if not self.images:
            raise TTFTError(f"no training image is at least {crop} pixels on each side")
        self.crop = crop
        self.scale = scale
        self.weights = torch.tensor([float(img.shape[-2] * img.shape[-1]) for img in self.images]) if by_area else None
        self.levels = levels
        self.gain_min = gain_min
        self.generator = torch.Generator().manual_seed(seed)

    def _pick(self) -> torch.Tensor:
        g = self.generator
        if self.weights is None:
            return self.images[int(torch.randint(len(self.images), (1,), generator=g))]
        return self.images[int(torch.multinomial(self.weights, 1, generator=g))]

    def batch(self, size: int) -> torch.Tensor:
        g, c = self.generator, self.crop
        out = []
        for _ in range(size):
            img = self._pick()
            top = int(torch.randint(img.shape[1] - c + 1, (1,), generator=g))
            left = int(torch.randint(img.shape[2] - c + 1, (1,), generator=g))
            crop = img[:, top : top + c, left : left + c]
            if torch.rand(1, generator=g) < 0.5:
                crop = crop.flip(-1)
            out.append(crop.float() / self.scale)
        return torch.stack([self._leveled(x) for x in out] if self.levels else out)

    def _leveled(self, x: torch.Tensor) -> torch.Tensor:
        g = self.generator
        if torch.rand(1, generator=g) >= self.levels:
            return x
        if torch.rand(1, generator=g) < 0.5:
            x = 1.0 - x
        gain = self.gain_min + (1.0 - self.gain_min) * float(torch.rand(1, generator=g))
        offset = (1.0 - gain) * float(torch.rand(1, generator=g))
        return offset + gain * x

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
