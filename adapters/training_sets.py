"""Which files a base codec trains on, how they are read, and the documented normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ttft_archive.ttft_core.errors import TTFTError

from .dicom import find_series, read_hu, read_unit
from .image_files import IMAGE_SUFFIXES, list_images, read_luma_u8, read_rgb_u8
from .normalise import HU_MAX, HU_MIN


@dataclass(frozen=True)
class TrainingSet:
    files: list[Path]
    read: Callable[[Path], torch.Tensor]  # a compact integer tensor (C, H, W)
    scale: float  # divides it into [0, 1]
    channels: int
    normalisation: str
    by_area: bool = False  # crops drawn in proportion to image area (see CropSampler)


def _read_ct_u16(path: Path) -> torch.Tensor:
    hu = np.clip(read_hu(path), HU_MIN, HU_MAX) - HU_MIN
    return torch.from_numpy(np.rint(hu).astype(np.int16))[None]  # 0..4095 fits int16


def _list_dicom(folders: list[str | Path]) -> list[Path]:
    files = sorted(p for f in folders for p in Path(f).rglob("*.dcm"))
    if not files:
        raise TTFTError(f"no DICOM files (*.dcm) under {', '.join(map(str, folders))}")
    return files


GRAY16_FULL = 65535


def _read_dicom_unit(path: Path) -> np.ndarray:
    """A DICOM image (the first frame of a multi-frame one) in [0, 1] as an ingest maps it: a CT
    by its Hounsfield units, an MR, a radiograph or anything else by its stored bits."""
    [series] = find_series([path])
    return read_unit(series, 0)


def _read_gray16(path: Path) -> torch.Tensor:
    """A DICOM image, one raster band or the luma of an 8-bit photograph per image, on one 16-bit
    scale: DICOM as an ingest maps it (a CT as the ct modality does), a raster band divided by its
    own maximum (as ingest maps uint16 bands), an 8-bit value times 257 (255 -> 65535)."""
    if path.suffix.lower() == ".dcm":
        return torch.from_numpy(np.rint(_read_dicom_unit(path) * GRAY16_FULL).astype(np.int32))[None]
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return torch.from_numpy(read_luma_u8(path).astype(np.int32) * 257)[None]
    band, index = _band_ref(path)
    from .raster import read_window

    values = read_window(band, bands=[index])[0].astype(np.float64)
    return torch.from_numpy(np.rint(values / max(values.max(), 1.0) * GRAY16_FULL).astype(np.int32))[None]


def _band_ref(path: Path) -> tuple[Path, int]:
    """Raster bands are listed as 'scene.tif#2' (1-based band)."""
    name, _, band = path.name.partition("#")
    return path.with_name(name), int(band)


def _files_under(folders: list[str | Path]) -> list[Path]:
    """Each path that is a file, and every file below each folder, in sorted order."""
    return [p for f in map(Path, folders) for p in ([f] if f.is_file() else sorted(f.rglob("*")))]


def _band_refs(path: Path, dtypes: tuple[str, ...], group: int) -> list[Path]:
    """A GeoTIFF of one of ``dtypes`` as references to the first band of each group of ``group``
    bands ('scene.tif#1', '#4'... for three); none for another data type."""
    import rasterio

    with rasterio.open(path) as src:
        if src.dtypes[0] not in dtypes:
            return []
        return [path.with_name(f"{path.name}#{b}") for b in range(1, src.count - group + 2, group)]


def _list_gray16(folders: list[str | Path]) -> list[Path]:
    files = []
    for p in _files_under(folders):
        if p.suffix.lower() == ".dcm" or p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        elif p.suffix.lower() in (".tif", ".tiff"):
            files += _band_refs(p, ("uint16", "int16"), 1)
    if not files:
        raise TTFTError(f"no DICOM files, 16-bit GeoTIFFs or 8-bit images under {', '.join(map(str, folders))}")
    return files


def _read_rgb_or_bands(path: Path) -> torch.Tensor:
    """An 8-bit photograph, or three bands of a 16-bit raster scene, each divided by its own
    maximum (as ingest maps uint16 bands) and rounded to 8 bits, so that the whole set, mostly
    photographs held in memory, stays uint8 (a wider type would hold four times the bytes)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_rgb_u8(path)
    scene, first = _band_ref(path)
    from .raster import read_window

    values = read_window(scene, bands=[first, first + 1, first + 2]).astype(np.float64)
    peak = np.maximum(values.reshape(3, -1).max(1), 1.0)[:, None, None]
    return torch.from_numpy(np.rint(values / peak * 255).astype(np.uint8))


def _list_rgb_or_bands(folders: list[str | Path]) -> list[Path]:
    """Photographs, and each 16-bit GeoTIFF as its groups of three bands ('scene.tif#1', '#4'...)."""
    files = []
    for p in _files_under(folders):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        elif p.suffix.lower() in (".tif", ".tiff"):
            files += _band_refs(p, ("uint16",), 3)
    if not files:
        raise TTFTError(f"no 8-bit images or 16-bit GeoTIFFs of three bands under {', '.join(map(str, folders))}")
    return files


def open_training_set(modality: str, folders: list[str | Path]) -> TrainingSet:
    if modality == "rgb8":
        return TrainingSet(list_images(folders), read_rgb_u8, 255.0, 3, "8-bit RGB: value / 255")
    if modality == "rgb-rasters":
        return TrainingSet(
            _list_rgb_or_bands(folders),
            _read_rgb_or_bands,
            255.0,
            3,
            "8-bit RGB: value / 255; 16-bit raster scenes by three bands, each band / its maximum, "
            "rounded to 8 bits; crops drawn in proportion to image area",
            by_area=True,
        )
    if modality == "ct":
        return TrainingSet(
            _list_dicom(folders),
            _read_ct_u16,
            HU_MAX - HU_MIN,
            1,
            f"CT: Hounsfield units clipped to [{HU_MIN:.0f}, {HU_MAX:.0f}], (HU + 1024) / 4095",
        )
    if modality == "gray16":
        return TrainingSet(
            _list_gray16(folders),
            _read_gray16,
            float(GRAY16_FULL),
            1,
            f"gray16: CT slices as HU clipped to [{HU_MIN:.0f}, {HU_MAX:.0f}], (HU + 1024) / 4095, other DICOM images "
            f"(MR, radiographs) as stored value / (2^bits stored - 1); 16-bit raster "
            f"bands (each band one image) as value / band maximum; 8-bit photographs as BT.601 luma / 255; "
            f"crops drawn in proportion to image area",
            by_area=True,
        )
    raise TTFTError(f"unknown training modality {modality!r}; known: rgb8, rgb-rasters, ct, gray16")
