"""Plain image files (PNG, JPEG, TIFF) in and out, as (C, H, W) float tensors in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ttft_archive.ttft_core.errors import TTFTError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm"}
BT601_LUMA = np.array([0.299, 0.587, 0.114])


def read_rgb(path: str | Path) -> torch.Tensor:
    """An 8-bit RGB image as a (3, H, W) float tensor in [0, 1]."""
    return read_rgb_u8(path).float() / 255.0


# modes whose samples are 8 bits or fewer: converting them to RGB keeps every value
EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La"}


def _refuse_deep(path: str | Path, im: Image.Image) -> None:
    """Refuse a 16-bit or float image rather than let the conversion to 8 bits clip or truncate it
    (Pillow opens a 48-bit PNG as 8-bit RGB without a word)."""
    deep = im.mode not in EIGHT_BIT_MODES
    if im.format == "PNG":
        with open(path, "rb") as f:
            header = f.read(25)
        deep = deep or (len(header) == 25 and header[24] > 8)  # IHDR bit depth
    if deep:
        raise TTFTError(
            f"{path}: samples of more than 8 bits (mode {im.mode}); this reads 8-bit images only, "
            "ingest 16-bit data as a raster (GeoTIFF) or DICOM instead"
        )


def read_rgb_u8(path: str | Path) -> torch.Tensor:
    """An 8-bit RGB image as a (3, H, W) uint8 tensor (a quarter of the memory, for training sets)."""
    try:
        with Image.open(path) as im:
            _refuse_deep(path, im)
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise TTFTError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise TTFTError(f"{path}: not a readable image ({exc})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_luma_u8(path: str | Path) -> np.ndarray:
    """An 8-bit image's BT.601 luma, rounded to 8 bits, as an (H, W) uint8 array."""
    rgb = read_rgb_u8(path).permute(1, 2, 0).numpy()
    return np.clip(np.rint(rgb @ BT601_LUMA), 0, 255).astype(np.uint8)


def write_rgb(path: str | Path, tile: torch.Tensor) -> None:
    array = (tile.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path)


def list_images(folders: list[str | Path]) -> list[Path]:
    files = sorted(p for folder in folders for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TTFTError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {', '.join(map(str, folders))}")
    return files
