"""The classical codecs our users compare against, through imagecodecs: JPEG 2000 (OpenJPEG),
HTJ2K and JPEG XL. Each takes an integer image (H, W) or (H, W, C) and a codec-specific level,
and returns the real byte string and its decoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import imagecodecs
import numpy as np


@dataclass(frozen=True)
class ClassicalCodec:
    name: str
    level_meaning: str
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]


def _j2k(a: np.ndarray, level: float) -> bytes:
    bits = 12 if a.dtype == np.uint16 and a.max() < 4096 else None
    return imagecodecs.jpeg2k_encode(a, level=level, bitspersample=bits)


def _jxl(a: np.ndarray, distance: float) -> bytes:
    return imagecodecs.jpegxl_encode(a, effort=7, distance=distance)


CODECS = {
    "jpeg2000": ClassicalCodec("jpeg2000", "target PSNR (dB)", _j2k, imagecodecs.jpeg2k_decode),
    "htj2k": ClassicalCodec("htj2k", "quantisation step", lambda a, q: imagecodecs.htj2k_encode(a, level=q),
                            imagecodecs.htj2k_decode),
    "jpegxl": ClassicalCodec("jpegxl", "Butteraugli distance", _jxl, imagecodecs.jpegxl_decode),
}  # fmt: skip


# the settings each evaluation set is swept at, meant to span the learned codecs' rates (bits per
# pixel of all bands together) so that BD-rate compares whole curves: from about 0.1 bpp (on CT from
# gray16 q00's 0.014 bpp) to a little past the learned codecs' highest rate
LEVELS = {
    "kodak": {"jpeg2000": [24, 26, 28, 30, 32, 34], "htj2k": [0.3, 0.2, 0.12, 0.08, 0.05], "jpegxl": [8, 5, 3, 2, 1.3]},
    "landsat": {"jpeg2000": [48, 50, 52, 54, 56, 58], "htj2k": [0.04, 0.02, 0.01, 0.005, 0.0025],
                "jpegxl": [12, 8, 4, 2, 1]},
    "multispectral": {"jpeg2000": [22, 24, 26, 28, 30, 32, 34], "htj2k": [0.3, 0.2, 0.12, 0.08, 0.05],
                      "jpegxl": [12, 8, 5, 3, 2]},
    "ct": {"jpeg2000": [30, 32, 34, 36, 40, 44, 48, 52, 56], "htj2k": [0.08, 0.04, 0.02, 0.01, 0.005, 0.0025, 0.0012],
           "jpegxl": [20, 12, 6, 3, 1.5, 0.8, 0.4]},
}  # fmt: skip


def roundtrip(codec: str, image: np.ndarray, level: float) -> tuple[int, np.ndarray]:
    c = CODECS[codec]
    data = c.encode(image, level)
    return len(data), c.decode(data)


def roundtrip_groups(codec: str, image: np.ndarray, level: float, groups: list[list[int]]) -> tuple[int, np.ndarray]:
    """Code each band group of an (H, W, C) image as its own file, as the learned codecs do (an
    RGB group + a NIR band), and sum the bytes. One file of four components is no fair baseline:
    OpenJPEG applies no colour transform to it (about 1.8x the bytes of RGB + NIR apart at the
    same PSNR) and JPEG XL takes the fourth as an alpha channel and codes it losslessly."""
    if len(groups) == 1:
        return roundtrip(codec, image, level)
    decoded, total = np.empty_like(image), 0
    for group in groups:
        part = np.ascontiguousarray(image[..., group] if len(group) > 1 else image[..., group[0]])
        n, d = roundtrip(codec, part, level)
        decoded[..., group] = d.reshape(*image.shape[:2], len(group))
        total += n
    return total, decoded
