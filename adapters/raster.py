"""Rasters through rasterio: band windows as numpy arrays (extended by the archive work)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from ttft_core.errors import TTFTError


def read_window(path: str | Path, window: Window | None = None, bands: list[int] | None = None) -> np.ndarray:
    """(bands, rows, cols) in the file's dtype; ``bands`` are 1-based as in rasterio."""
    try:
        with rasterio.open(path) as src:
            return src.read(bands, window=window)
    except RasterioIOError as exc:
        raise TTFTError(f"{path}: not a readable raster ({exc})") from None
