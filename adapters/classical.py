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


def roundtrip(codec: str, image: np.ndarray, level: float) -> tuple[int, np.ndarray]:
    c = CODECS[codec]
    data = c.encode(image, level)
    return len(data), c.decode(data)
