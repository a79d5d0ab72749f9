"""The classical codecs our users compare against, through imagecodecs: JPEG 2000 (OpenJPEG),
HTJ2K (OpenJPH) and JPEG XL (libjxl), and their lossless modes (with JPEG-LS).

The evaluation convention (docs/evaluation.md): a classical codec is swept **per image to a list
of target rates**, each found by bisection on the codec's own parameter until the real byte count
is within 1% of the target (or the parameter reaches its limit), never by one quality setting for
every image: at equal quality per image the hard images take most of the bits and the averaged
curve understates the codec (on Kodak JPEG 2000 by about 1.3 dB at 0.4 bpp).

Each codec is set up as a careful user would:
- JPEG 2000: OpenJPEG, irreversible 9/7 wavelet, the multiple-component (colour) transform on for
  RGB, 6 resolution levels (5 decompositions), 64x64 code-blocks, one quality layer, rate set by
  OpenJPEG's distortion target (its PCRD truncation), 12-bit samples where the data fit in 12 bits.
- HTJ2K: OpenJPH, irreversible 9/7, colour transform on for RGB, 6 resolution levels, 64x64
  code-blocks; its rate is set by the quantisation step (OpenJPH has no rate control).
- JPEG XL: libjxl, effort 7 (its default), rate set by the Butteraugli distance (0.05 to 25).
Band groups (an RGB group + a NIR band) are coded as separate files with one shared parameter, as
the learned codecs code them, and their bytes summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import imagecodecs
import numpy as np


@dataclass(frozen=True)
class ClassicalCodec:
    name: str
    parameter: str  # what the swept parameter means
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]
    limits: tuple[float, float]  # the parameter's range, lowest rate first
    log_scale: bool  # bisect the parameter's logarithm (steps, distances) or the value (dB)
    lossless: Callable[[np.ndarray], bytes]


def _bits(a: np.ndarray) -> int | None:
    return 12 if a.dtype == np.uint16 and a.max() < 4096 else None


def _j2k(a: np.ndarray, target_psnr: float) -> bytes:
    return imagecodecs.jpeg2k_encode(
        a, level=target_psnr, bitspersample=_bits(a), resolutions=6, reversible=False, mct=a.ndim == 3, numthreads=1
    )


def _htj2k(a: np.ndarray, step: float) -> bytes:
    return imagecodecs.htj2k_encode(a, level=step, rgb=a.ndim == 3 and a.shape[-1] == 3, resolutions=6)


def _jxl(a: np.ndarray, distance: float) -> bytes:
    return imagecodecs.jpegxl_encode(a, effort=7, distance=distance, numthreads=1)


CODECS = {
    "jpeg2000": ClassicalCodec(
        "jpeg2000",
        "OpenJPEG distortion target (PSNR, dB)",
        _j2k,
        imagecodecs.jpeg2k_decode,
        (8.0, 110.0),
        False,
        lambda a: imagecodecs.jpeg2k_encode(a, reversible=True, bitspersample=_bits(a), mct=a.ndim == 3, numthreads=1),
    ),
    "htj2k": ClassicalCodec(
        "htj2k",
        "quantisation step",
        _htj2k,
        imagecodecs.jpeg2k_decode,
        (2.0, 1e-6),
        True,
        lambda a: imagecodecs.htj2k_encode(a, reversible=True, rgb=a.ndim == 3 and a.shape[-1] == 3),
    ),
    "jpegxl": ClassicalCodec(
        "jpegxl",
        "Butteraugli distance",
        _jxl,
        imagecodecs.jpegxl_decode,
        (25.0, 0.05),
        True,
        lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=7, numthreads=1),
    ),
}
# lossless encoder and decoder by codec
LOSSLESS = {name: (c.lossless, c.decode) for name, c in CODECS.items()} | {
    "jpegls": (imagecodecs.jpegls_encode, imagecodecs.jpegls_decode)
}
RATE_TOLERANCE = 0.01  # a swept point's rate is within 1% of its target, unless a limit stops it


def _targets(low: float, high: float) -> list[float]:
    """Target rates from ``low`` to ``high`` bits per pixel, each 1.5 times the one before."""
    count = math.floor(math.log(high / low, 1.5)) + 1
    return [round(low * 1.5**i, 5) for i in range(count)]


# the target rates of each evaluation set (bits per pixel of all bands together, real bytes),
# spanning every learned curve there with room on both sides, so that each image's curves overlap
RATES = {
    "kodak": _targets(0.03, 2.5),
    "gray8": _targets(0.02, 2.5),
    "landsat": _targets(0.015, 2.5),
    "landsat-bands": _targets(0.01, 2.0),  # one band of those tiles alone
    "multispectral": _targets(0.05, 4.0),
    "ct": _targets(0.008, 1.6),
}


@dataclass
class SweptPoint:
    target_bpp: float
    level: float
    nbytes: int
    decoded: np.ndarray


@dataclass
class _Trials:
    """Every parameter value tried on one image, with its byte string, so that the targets of a
    sweep share their encodings and each bisection starts from the tightest bracket known."""

    encode: Callable[[float], list[bytes]]  # one byte string per band group
    tried: dict[float, list[bytes]] = field(default_factory=dict)

    def size(self, level: float) -> int:
        if level not in self.tried:
            self.tried[level] = self.encode(level)
        return sum(len(part) for part in self.tried[level])


def _bisect(codec: ClassicalCodec, trials: _Trials, target_bytes: float) -> float:
    """The parameter whose byte count is within RATE_TOLERANCE of ``target_bytes``; at a limit,
    or where the rate cannot be set that finely (the parameter's steps are too coarse), the
    closest value tried."""
    for limit in codec.limits:
        trials.size(limit)

    def below(level: float) -> bool:  # the level gives fewer bytes than the target
        return trials.size(level) < target_bytes

    under = [v for v in trials.tried if below(v)]
    over = [v for v in trials.tried if not below(v)]
    if not under or not over:
        return min(trials.tried, key=lambda v: abs(trials.size(v) - target_bytes))
    # the tightest bracket: the lowest-rate value above the target and the highest-rate below it
    a = max(under, key=trials.size)
    b = min(over, key=trials.size)
    to_x = (lambda v: math.log(v)) if codec.log_scale else (lambda v: v)
    from_x = (lambda x: math.exp(x)) if codec.log_scale else (lambda x: x)
    for _ in range(40):
        best = min((a, b), key=lambda v: abs(trials.size(v) - target_bytes))
        if abs(trials.size(best) - target_bytes) <= RATE_TOLERANCE * target_bytes:
            return best
        xa, xb = to_x(a), to_x(b)
        if abs(xb - xa) < 1e-6:
            return best
        mid = from_x((xa + xb) / 2)
        if below(mid):
            a = mid
        else:
            b = mid
    return min((a, b), key=lambda v: abs(trials.size(v) - target_bytes))


def sweep(
    codec_name: str, image: np.ndarray, target_bpp: list[float], groups: list[list[int]] | None = None
) -> list[SweptPoint]:
    """The image (H, W) or (H, W, C) integers coded by the codec at each target rate (bits per
    pixel of all bands together), each within 1% of its target where the codec's parameter
    reaches it: real bytes and the decoding."""
    codec = _codec(codec_name)
    pixels = image.shape[0] * image.shape[1]
    trials = _Trials(lambda level: _encode_groups(codec, image, level, groups))
    points = []
    for target in target_bpp:
        level = _bisect(codec, trials, target * pixels / 8)
        decoded = _decode_groups(codec, image, trials.tried[level], groups)
        points.append(SweptPoint(target, level, trials.size(level), decoded))
    return points


def _codec(name: str) -> ClassicalCodec:
    from ttft_archive.ttft_core.errors import TTFTError

    if name not in CODECS:
        raise TTFTError(f"unknown classical codec {name!r}; known: {', '.join(CODECS)}")
    return CODECS[name]


def _encode_groups(
    codec: ClassicalCodec, image: np.ndarray, level: float, groups: list[list[int]] | None
) -> list[bytes]:
    if groups is None or len(groups) == 1:
        return [codec.encode(image, level)]
    return [codec.encode(_group(image, g), level) for g in groups]


def _decode_groups(
    codec: ClassicalCodec, image: np.ndarray, parts: list[bytes], groups: list[list[int]] | None
) -> np.ndarray:
    if groups is None or len(groups) == 1:
        return codec.decode(parts[0]).reshape(image.shape)
    decoded = np.empty_like(image)
    for data, group in zip(parts, groups):
        decoded[..., group] = codec.decode(data).reshape(*image.shape[:2], len(group))
    return decoded


def _group(image: np.ndarray, group: list[int]) -> np.ndarray:
    return np.ascontiguousarray(image[..., group] if len(group) > 1 else image[..., group[0]])


def roundtrip(codec: str, image: np.ndarray, level: float) -> tuple[int, np.ndarray]:
    """One image at one parameter value: real bytes and the decoding."""
    c = _codec(codec)
    data = c.encode(image, level)
    return len(data), c.decode(data)


def roundtrip_groups(codec: str, image: np.ndarray, level: float, groups: list[list[int]]) -> tuple[int, np.ndarray]:
    """Code each band group of an (H, W, C) image as its own file, as the learned codecs do (an
    RGB group + a NIR band), and sum the bytes. One file of four components is no fair baseline:
    OpenJPEG applies no colour transform to it (about 1.8x the bytes of RGB + NIR apart at the
    same PSNR) and JPEG XL takes the fourth as an alpha channel and codes it losslessly."""
    c = _codec(codec)
    parts = _encode_groups(c, image, level, groups)
    return sum(len(p) for p in parts), _decode_groups(c, image, parts, groups)


def lossless_bytes(image: np.ndarray, groups: list[list[int]] | None = None) -> dict[str, int]:
    """What a lossless archive stores for the image, by codec (each band group its own file),
    each file checked to decode back exactly."""
    out = {}
    for name, (encode, decode) in LOSSLESS.items():
        images = [_group(image, g) for g in groups] if groups and len(groups) > 1 else [image]
        parts = [encode(a) for a in images]
        for a, data in zip(images, parts):
            if not np.array_equal(decode(data).reshape(a.shape), a):
                raise AssertionError(f"lossless {name} did not decode back exactly")
        out[name] = sum(len(p) for p in parts)
    return out
