"""Which files a base codec trains on, how they are read, and the documented normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ttft_core.errors import TTFTError

from .dicom import read_hu
from .image_files import list_images, read_rgb_u8
from .normalise import HU_MAX, HU_MIN


@dataclass(frozen=True)
class TrainingSet:
    files: list[Path]
    read: Callable[[Path], torch.Tensor]  # a compact integer tensor (C, H, W)
    scale: float  # divides it into [0, 1]
    channels: int
    normalisation: str


def _read_ct_u16(path: Path) -> torch.Tensor:
    hu = np.clip(read_hu(path), HU_MIN, HU_MAX) - HU_MIN
    return torch.from_numpy(np.rint(hu).astype(np.int16))[None]  # 0..4095 fits int16


def _list_dicom(folders: list[str | Path]) -> list[Path]:
    files = sorted(p for f in folders for p in Path(f).rglob("*.dcm"))
    if not files:
        raise TTFTError(f"no DICOM files (*.dcm) under {', '.join(map(str, folders))}")
    return files


def open_training_set(modality: str, folders: list[str | Path]) -> TrainingSet:
    if modality == "rgb8":
        return TrainingSet(list_images(folders), read_rgb_u8, 255.0, 3, "8-bit RGB: value / 255")
    if modality == "ct":
        return TrainingSet(
            _list_dicom(folders), _read_ct_u16, HU_MAX - HU_MIN, 1,
            f"CT: Hounsfield units clipped to [{HU_MIN:.0f}, {HU_MAX:.0f}], (HU + 1024) / 4095",
        )  # fmt: skip
    raise TTFTError(f"unknown training modality {modality!r}; known: rgb8, ct")
