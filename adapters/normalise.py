"""Documented mappings from stored sample values to the codec's [0, 1] range.

- 8-bit images: value / 255.
- 16-bit rasters: value / scale, the scale per band recorded with the model or archive
  (a sensor's saturation value, or the 99.99th percentile of its training data).
- CT: Hounsfield units clipped to [-1024, 3071] and mapped linearly, (HU + 1024) / 4095, which
  keeps the 12 bits a CT scanner stores. What a DICOM slice holds outside that range, and its
  padding, the archive keeps exactly beside the tiles (adapters.pixel_exceptions).
"""

from __future__ import annotations

import numpy as np
import torch

from ttft_archive.ttft_core.tasks import HU_MAX, HU_MIN


def from_uint8(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 255.0)


def from_scaled(array: np.ndarray, scale: float | np.ndarray) -> torch.Tensor:
    scale = np.asarray(scale, dtype=np.float32).reshape(-1, *([1] * (array.ndim - 1)))
    return torch.from_numpy(np.clip(array.astype(np.float32) / scale, 0.0, 1.0))


def from_hu(hu: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((np.clip(hu, HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)).float()


def to_hu(x: torch.Tensor) -> np.ndarray:
    return x.double().numpy() * (HU_MAX - HU_MIN) + HU_MIN
