"""DICOM through pydicom: CT slices in Hounsfield units (extended by the archive work)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ttft_core.errors import TTFTError


def read_hu(path: str | Path) -> np.ndarray:
    """A single-frame CT slice as float32 Hounsfield units (rescale slope and intercept applied)."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except (InvalidDicomError, FileNotFoundError, OSError) as exc:
        raise TTFTError(f"{path}: not a readable DICOM file ({exc})") from None
    except (AttributeError, ValueError) as exc:
        raise TTFTError(f"{path}: no usable pixel data ({exc})") from None
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    return pixels.astype(np.float32) * slope + intercept
