"""The evaluation images of `ttft eval` and the benchmarks: evaluation-only items of ../shared/data
(never trained on), or the bundled excerpts when the shared set is absent.

Each image comes twice: as the codec's [0, 1] tensor, and as the integers a classical codec is given
(what an archive would store: 8-bit RGB, 16-bit bands, HU + 1024 for CT), with the mapping that
brings a classical decoding back to [0, 1], so both are judged on the same values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rasterio.windows import Window

from ttft_archive.adapters import SAMPLES, raster
from ttft_archive.adapters.dicom import read_hu
from ttft_archive.adapters.image_files import read_rgb_u8
from ttft_archive.adapters.normalise import from_hu
from ttft_archive.ttft_core.errors import TTFTError
from ttft_archive.ttft_core.tasks import HU_MIN

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TTFT_SHARED_DATA", ROOT.parent / "shared" / "data"))


@dataclass(frozen=True)
class EvalImage:
    name: str
    x: torch.Tensor  # (C, H, W) in [0, 1]
    stored: np.ndarray  # integers, (H, W, C) or (H, W): what a classical codec codes
    to_unit: Callable[[np.ndarray], torch.Tensor]  # a classical decoding -> (C, H, W) in [0, 1]
    scales: tuple[float, ...] | None = None  # per band: stored value = unit value x scale (16-bit rasters)


@dataclass(frozen=True)
class EvalSet:
    name: str
    families: list[str]  # the codec family of each band group
    description: str
    images: list[EvalImage]
    groups: list[list[int]]  # 0-based channels each codec codes (an RGB group, a NIR band...)
    bands: dict[str, int] | None = None  # band names -> channels, for the spectral tasks


def _centre(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return a[..., top : top + size, left : left + size]


def kodak(count: int, size: int) -> EvalSet:
    files = sorted((SHARED / "natural").glob("kodim*.png"))[:count]
    source = f"centre {size}x{size} crops of {len(files)} Kodak images"
    if not files:
        files, source = [SAMPLES / "kodim23_crop256.png"], "the bundled Kodak crop (../shared absent)"
    images = []
    for f in files:
        a = _centre(read_rgb_u8(f).numpy(), size)
        images.append(
            EvalImage(
                f.stem,
                torch.from_numpy(a).float() / 255,
                np.ascontiguousarray(a.transpose(1, 2, 0)),
                lambda d: torch.from_numpy(d.astype(np.float32)).permute(2, 0, 1) / 255,
            )
        )
    return EvalSet("kodak", ["rgb"], source, images, [[0, 1, 2]])


def landsat(count: int, size: int) -> EvalSet:
    """Bands 4, 3, 2 of Landsat 8 scene 224077 (16-bit), stretched per band as ingest does."""
    bands = [SHARED / "satellite" / f"landsat8_224077_B{b}_uint16.tif" for b in (4, 3, 2)]
    if not all(p.is_file() for p in bands):
        return _bundled_landsat(size)
    scales = [_scales(p)[0] for p in bands]
    info = raster.raster_info(bands[0])
    # tiles spread along the scene's diagonal, away from the nodata border
    steps = np.linspace(0.25, 0.75, count)
    images = []
    for t in steps:
        top, left = int(t * (info.height - size)), int(t * (info.width - size))
        stack = np.concatenate([raster.read_window(p, Window(left, top, size, size)) for p in bands])
        images.append(_landsat_image(f"224077_r{top}_c{left}", stack, scales))
    return EvalSet(
        "landsat", ["rgb"], f"{count} tiles {size}x{size} of Landsat 8 224077 (B4, B3, B2; 16-bit)", images, [[0, 1, 2]]
    )


def _scales(path: Path) -> list[float]:
    """Each band's scale in the ingest's mapping of a 16-bit file."""
    scanned = raster.scan(path)
    return raster.value_mapping("uint16", scanned.lo, scanned.hi)[1]


def _bundled_landsat(size: int) -> EvalSet:
    path = SAMPLES / "landsat8_224078_rgb_crop256.tif"
    stack = _centre(raster.read_window(path), size)
    scales = _scales(path)
    return EvalSet(
        "landsat",
        ["rgb"],
        "the bundled Landsat crop (../shared absent)",
        [_landsat_image(path.stem, stack, scales)],
        [[0, 1, 2]],
    )


def _landsat_image(name: str, stack: np.ndarray, scales: list[float]) -> EvalImage:
    offsets = [0.0] * len(scales)
    return EvalImage(
        name,
        torch.from_numpy(raster.to_unit(stack, offsets, scales)),
        np.ascontiguousarray(stack.transpose(1, 2, 0)),
        lambda d: torch.from_numpy(raster.to_unit(d.transpose(2, 0, 1), offsets, scales)),
        tuple(scales),
    )


def ct(count: int, size: int) -> EvalSet:
    """Slices of the evaluation series ct_lung_A0002, evenly spaced, centre crops."""
    files = sorted((SHARED / "medical" / "ct_lung_A0002").glob("*.dcm"))
    source = f"centre {size}x{size} crops of {count} slices of ct_lung_A0002"
    if files:
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, count).round()]
    else:
        files, source = [SAMPLES / "ct_3slice_01.dcm"], "the bundled CT slice (../shared absent)"
    images = []
    for f in files:
        hu = _centre(np.clip(np.rint(read_hu(f)), HU_MIN, HU_MIN + 4095), size)
        images.append(
            EvalImage(
                f"{f.parent.name}/{f.stem}",
                from_hu(hu)[None],
                (hu - HU_MIN).astype(np.uint16),
                lambda d: from_hu(d.astype(np.float64) + HU_MIN)[None],
            )
        )
    return EvalSet("ct", ["gray16"], source, images, [[0]])


def multispectral(count: int, size: int) -> EvalSet:
    """Red, green, blue and NIR (8-bit): the two RGBN tiles and crops of the 7-band Landsat scene
    (its bands 1 to 4: blue, green, red, NIR), coded as an RGB group + a NIR band (gray16)."""
    rgbn = sorted((SHARED / "satellite").glob("rgbn_4band_uint8_*.tif"))
    seven = SHARED / "satellite" / "landsat_7band_uint8.tif"
    stacks = []
    for path in rgbn:
        crop = _centre(raster.read_window(path), size)
        # the RGBN tile's two dates ship as the very same pixels: an image counts once
        if len(stacks) < count and not any(np.array_equal(crop, taken) for _, taken in stacks):
            stacks.append((path.stem, crop))
    source = (
        f"centre {size}x{size} crops of {len(stacks)} RGBN tile(s) and {max(count - len(stacks), 0)} of landsat_7band"
    )
    if seven.is_file() and count > len(stacks):
        info = raster.raster_info(seven)
        for t in np.linspace(0.3, 0.7, count - len(stacks)):
            top, left = int(t * (info.height - size)), int(t * (info.width - size))
            bgrn = raster.read_window(seven, Window(left, top, size, size), [1, 2, 3, 4])
            stacks.append((f"landsat_7band_r{top}_c{left}", bgrn[[2, 1, 0, 3]]))  # to red, green, blue, NIR
    if not stacks:
        path = SAMPLES / "rgbn_4band_20160517_crop192.tif"
        stacks, source = [(path.stem, _centre(raster.read_window(path), min(size, 192)))], "the bundled RGBN crop"
    images = [
        EvalImage(
            name,
            torch.from_numpy(a.astype(np.float32) / 255),
            np.ascontiguousarray(a.transpose(1, 2, 0)),
            lambda d: torch.from_numpy(d.astype(np.float32).transpose(2, 0, 1) / 255),
        )
        for name, a in stacks
    ]
    return EvalSet(
        "multispectral",
        ["rgb", "gray16"],
        source,
        images,
        [[0, 1, 2], [3]],
        {"red": 0, "green": 1, "blue": 2, "nir": 3},
    )


EVAL_SETS = {"kodak": kodak, "landsat": landsat, "ct": ct, "multispectral": multispectral}


def open_eval_set(name: str, count: int = 4, size: int = 256) -> EvalSet:
    if name not in EVAL_SETS:
        raise TTFTError(f"unknown evaluation set {name!r}; known: {', '.join(EVAL_SETS)}")
    return EVAL_SETS[name](count, size)
