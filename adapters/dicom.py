"""DICOM through pydicom: series discovery and ordering, pixel values in and out, derived series.

A folder (or a list of files) becomes series grouped by SeriesInstanceUID, ordered along the slice
normal by ImagePositionPatient (InstanceNumber when positions are absent); multi-frame files give
one slice per frame. Pixel values map to [0, 1] in one of two documented ways: CT with a rescale
goes through Hounsfield units, (HU + 1024) / 4095 over [-1024, 3071]; anything else uses its
stored values over the BitsStored range. Output keeps the stored representation (bits, sign,
rescale) and marks the series as a lossy derivative.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ttft_archive.ttft_core.errors import TTFTError
from ttft_archive.ttft_core.tasks import HU_MAX, HU_MIN


@dataclass(frozen=True)
class SliceRef:
    path: str
    frame: int | None  # None for a single-frame file


@dataclass(frozen=True)
class Series:
    uid: str
    slices: tuple[SliceRef, ...]
    rows: int
    cols: int
    modality: str
    mapping: str  # "hu" or "stored"
    bits_stored: int
    signed: bool


def _read_header(path: Path):
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as exc:
        raise TTFTError(f"{path}: not a readable DICOM file ({exc})") from None


def find_series(sources: list[str | Path]) -> list[Series]:
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files += sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif source.exists():
            files.append(source)
        else:
            raise TTFTError(f"{source}: no such file or folder")
    groups: dict[str, list] = {}
    for f in files:
        ds = _read_header(f)
        if "PixelData" not in ds and not _has_pixel_tag(f):
            raise TTFTError(f"{f}: the DICOM file has no pixel data")
        groups.setdefault(str(ds.get("SeriesInstanceUID", f.name)), []).append((f, ds))
    if not groups:
        raise TTFTError(f"no DICOM files in {', '.join(map(str, sources))}")
    return [_series(uid, members) for uid, members in sorted(groups.items())]


def _has_pixel_tag(path: Path) -> bool:
    # stop_before_pixels drops PixelData from the dataset; look for the tag without decoding it
    ds = pydicom.dcmread(path, specific_tags=["PixelData"])
    return "PixelData" in ds


def _series(uid: str, members: list) -> Series:
    first = members[0][1]
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in members}
    if len(shapes) != 1:
        raise TTFTError(f"series {uid}: slices of different sizes {sorted(shapes)}")

    def position(ds) -> float:
        ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if ipp is not None and iop is not None:
            normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
            return float(np.dot(normal, np.asarray(ipp, float)))
        return float(ds.get("InstanceNumber", 0))

    ordered = sorted(members, key=lambda m: (position(m[1]), int(m[1].get("InstanceNumber", 0))))
    slices = []
    for f, ds in ordered:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        slices += [SliceRef(str(f), None)] if frames == 1 else [SliceRef(str(f), i) for i in range(frames)]
    modality = str(first.get("Modality", ""))
    mapping = "hu" if modality == "CT" and "RescaleIntercept" in first else "stored"
    return Series(
        uid,
        tuple(slices),
        int(first.Rows),
        int(first.Columns),
        modality,
        mapping,
        int(first.get("BitsStored", 16)),
        int(first.get("PixelRepresentation", 0)) == 1,
    )


def _pixels(ref: SliceRef):
    try:
        ds = pydicom.dcmread(ref.path)
        arr = ds.pixel_array
    except (InvalidDicomError, OSError) as exc:
        raise TTFTError(f"{ref.path}: not a readable DICOM file ({exc})") from None
    except (AttributeError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise TTFTError(f"{ref.path}: pixel data cannot be decoded ({str(exc).splitlines()[0]})") from None
    if arr.ndim == 3 and ref.frame is not None:
        arr = arr[ref.frame]
    if arr.ndim != 2:
        raise TTFTError(f"{ref.path}: only single-channel images are supported, got shape {arr.shape}")
    return ds, arr


def read_hu(path: str | Path) -> np.ndarray:
    """A single-frame slice as float32 Hounsfield units (rescale slope and intercept applied)."""
    return _rescaled(*_pixels(SliceRef(str(path), None)))


def _rescaled(ds, arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def read_unit(series: Series, index: int) -> np.ndarray:
    """Slice ``index`` of the series as float32 in [0, 1], by the series' mapping."""
    ds, arr = _pixels(series.slices[index])
    if series.mapping == "hu":
        return (np.clip(_rescaled(ds, arr), HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
    lo, span = _stored_range(series)
    return np.clip((arr.astype(np.float32) - lo) / span, 0, 1)


def _stored_range(series: Series) -> tuple[float, float]:
    if series.signed:
        return -(2.0 ** (series.bits_stored - 1)), 2.0**series.bits_stored - 1
    return 0.0, 2.0**series.bits_stored - 1


def stored_from_unit(series: Series, x: np.ndarray, ds) -> np.ndarray:
    """[0, 1] values back to the stored pixel representation of ``ds``."""
    if series.mapping == "hu":
        hu = x.astype(np.float64) * (HU_MAX - HU_MIN) + HU_MIN
        stored = (hu - float(ds.get("RescaleIntercept", 0))) / float(ds.get("RescaleSlope", 1))
    else:
        lo, span = _stored_range(series)
        stored = x.astype(np.float64) * span + lo
    dtype = np.int16 if series.signed else np.uint16
    lo_v, hi_v = (
        (-(2 ** (series.bits_stored - 1)), 2 ** (series.bits_stored - 1) - 1)
        if series.signed
        else (0, 2**series.bits_stored - 1)
    )
    return np.clip(np.rint(stored), lo_v, hi_v).astype(dtype)


def slice_header(series: Series, index: int) -> str:
    """Slice ``index``'s header without pixel data, as DICOM JSON: what the archive keeps so that a
    derived series can be written without the source files."""
    ds = _read_header(Path(series.slices[index].path))
    for tag in ("NumberOfFrames", "PerFrameFunctionalGroupsSequence", "FrameIncrementPointer"):
        if tag in ds and series.slices[index].frame is not None:
            del ds[tag]
    return ds.to_json(bulk_data_threshold=1 << 20, bulk_data_element_handler=lambda _: "")


def write_derived_series(
    series: Series,
    headers: dict[int, str],
    slices: dict[int, np.ndarray],
    out_dir: str | Path,
    ratio: float,
    method: str,
) -> list[Path]:
    """Write decoded slices (index -> [0, 1] array) as a new series carrying the stored headers:
    patient and study tags kept, new Series and SOP Instance UIDs, marked lossy and derived."""
    from pydicom.dataset import Dataset, FileMetaDataset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    written = []
    for n, (index, x) in enumerate(sorted(slices.items())):
        ds = Dataset.from_json(headers[index])
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        stored = stored_from_unit(series, x, ds)
        ds.set_pixel_data(
            stored, photometric_interpretation=str(ds.PhotometricInterpretation), bits_stored=series.bits_stored
        )
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageType = ["DERIVED", "SECONDARY"] + list(ds.get("ImageType", ["", ""]))[2:]
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{ratio:.2f}"[:16]
        ds.LossyImageCompressionMethod = method[:16]
        ds.DerivationDescription = f"Reconstruction from a learned-codec archive ({method})"
        ds.SeriesDescription = (str(ds.get("SeriesDescription", "")) + " lossy").strip()[:64]
        path = out / f"{n + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def describe(meta: dict) -> dict:
    """What a user needs to ask for slices of a stored series: its shape (slices, rows, columns),
    modality and stored sample type."""
    return {
        "series_uid": meta["series_uid"],
        "modality": meta["modality"],
        "shape": [meta["slices"], meta["rows"], meta["cols"]],
        "dtype": f"{'int' if meta['signed'] else 'uint'}16 ({meta['bits_stored']} bits stored)",
    }
