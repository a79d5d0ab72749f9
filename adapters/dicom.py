"""DICOM through pydicom: series discovery and ordering, pixel values in and out, derived series.

A folder (or a list of files) becomes series grouped by SeriesInstanceUID, ordered along the slice
normal by ImagePositionPatient (InstanceNumber when positions are absent); multi-frame files give
one slice per frame. Pixel values map to [0, 1] in one of two documented ways: CT with a rescale
(its own, or an enhanced instance's Pixel Value Transformation) goes through Hounsfield units,
(HU + 1024) / 4095 over [-1024, 3071]; anything else uses its stored values over the BitsStored
range. Pixels outside that range, and a padding region, are an
exception set kept exactly beside the tiles (``slice_exceptions``, adapters.pixel_exceptions).
Output keeps the stored representation (bits, sign, rescale, padding), puts the exceptions back and
marks each instance as a lossy derivative of the one it came from.
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.sequence import Sequence
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from ttft_archive.adapters import pixel_exceptions
from ttft_archive.ttft_core.errors import TTFTError
from ttft_archive.ttft_core.tasks import HU_MAX, HU_MIN

PIXEL_DATA = 0x7FE00010


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
    if path.is_file() and path.stat().st_size == 0:
        raise TTFTError(f"{path}: the file is empty (0 bytes), not a DICOM file")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as exc:
        raise TTFTError(f"{path}: not a readable DICOM file ({exc})") from None
    except (EOFError, ValueError, KeyError, struct.error) as exc:  # pydicom's own parse faults
        raise TTFTError(f"{path}: the DICOM file cannot be read ({str(exc).splitlines()[0]})") from None


def _walk(path: Path, ds) -> tuple[bool, str | None]:
    """(whether the data set holds PixelData, where the file ends inside an element or None).

    pydicom stops quietly where a file ends inside an element, keeping what it read: this walks the
    top-level elements once (large values are skipped, not read) and compares where the last one
    ends with the file's size."""
    size = path.stat().st_size
    meta = ds.file_meta
    group_length, syntax = meta.get("FileMetaInformationGroupLength"), meta.get("TransferSyntaxUID")
    if group_length is None:  # no standard meta group to start from: look for the tag alone
        return "PixelData" in pydicom.dcmread(path, specific_tags=["PixelData"]), None
    start = 128 + 4 + 12 + int(group_length)  # preamble, 'DICM', the group length element, the group
    if syntax is None or size < start:
        return False, "inside its file meta information"
    syntax = UID(syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        return True, None  # a deflated data set has no element boundaries in the file to check
    has_pixels, end, last = False, start, "its file meta information"
    try:
        implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    except ValueError:  # a private transfer syntax: read as explicit little endian
        implicit, little = False, True
    with path.open("rb") as fp:
        fp.seek(start)
        try:
            for elem in data_element_generator(fp, implicit, little, defer_size=1024):
                has_pixels |= elem.tag == PIXEL_DATA
                defined = isinstance(elem, RawDataElement) and elem.length != 0xFFFFFFFF
                end, last = (elem.value_tell + elem.length if defined else fp.tell()), f"{elem.tag}"
        except (EOFError, struct.error, ValueError, NotImplementedError):
            return has_pixels, f"inside the element after {last}"
    if end > size:
        return has_pixels, f"inside element {last}, {end - size} bytes short"
    if end < size and size - end < 12:  # fewer bytes than an element's header: a cut header
        return has_pixels, f"inside the header of the element after {last}"
    return has_pixels, None


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
        has_pixels, truncated = _walk(f, ds)
        if truncated:
            raise TTFTError(f"{f}: the DICOM file is truncated (it ends {truncated})")
        if not has_pixels:
            raise TTFTError(f"{f}: the DICOM file has no pixel data")
        groups.setdefault(str(ds.get("SeriesInstanceUID", f.name)), []).append((f, ds))
    if not groups:
        raise TTFTError(f"no DICOM files in {', '.join(map(str, sources))}")
    return [_series(uid, members) for uid, members in sorted(groups.items())]


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
    mapping = "hu" if modality == "CT" and rescale(first, 0) is not None else "stored"
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
    path = Path(ref.path)
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except (
        InvalidDicomError,
        OSError,
        AttributeError,
        ValueError,
        RuntimeError,
        NotImplementedError,
        EOFError,
        struct.error,
    ) as exc:
        raise _pixel_error(path, exc) from None
    if arr.ndim == 3 and ref.frame is not None:
        arr = arr[ref.frame]
    if arr.ndim != 2:
        raise TTFTError(f"{ref.path}: only single-channel images are supported, got shape {arr.shape}")
    return ds, arr


def _pixel_error(path: Path, exc: Exception) -> TTFTError:
    """One line for a slice whose pixels could not be had: empty, not DICOM, truncated, without
    pixel data, or pixel data that cannot be decoded."""
    ds = _read_header(path)  # raises the one-line error of an empty or unreadable file
    has_pixels, truncated = _walk(path, ds)
    if truncated:
        return TTFTError(f"{path}: the DICOM file is truncated (it ends {truncated})")
    if not has_pixels:
        return TTFTError(f"{path}: the DICOM file has no pixel data")
    return TTFTError(f"{path}: pixel data cannot be decoded ({str(exc).splitlines()[0]})")


def read_hu(path: str | Path) -> np.ndarray:
    """A single-frame slice as float32 Hounsfield units (rescale slope and intercept applied)."""
    return _rescaled(*_pixels(SliceRef(str(path), None)), None)


def rescale(ds, frame: int | None) -> tuple[float, float] | None:
    """(slope, intercept) from stored values to the modality's units: the dataset's own Rescale
    Slope and Intercept, or, in an enhanced multi-frame instance, those of its Pixel Value
    Transformation, the frame's own functional group first, then the shared one (PS3.3
    C.7.6.16.2.9); None when the dataset gives none."""
    if "RescaleIntercept" in ds:
        return float(ds.get("RescaleSlope", 1)), float(ds.RescaleIntercept)
    for groups, i in (("PerFrameFunctionalGroupsSequence", frame or 0), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups) or []
        transform = items[i].get("PixelValueTransformationSequence") if i < len(items) else None
        if transform and "RescaleIntercept" in transform[0]:
            return float(transform[0].get("RescaleSlope", 1)), float(transform[0].RescaleIntercept)
    return None


def _rescaled(ds, arr: np.ndarray, frame: int | None) -> np.ndarray:
    slope, intercept = rescale(ds, frame) or (1.0, 0.0)
    return arr.astype(np.float32) * slope + intercept


def read_unit(series: Series, index: int) -> np.ndarray:
    """Slice ``index`` of the series as float32 in [0, 1], by the series' mapping."""
    ref = series.slices[index]
    return _unit(series, *_pixels(ref), ref.frame)


def read_unit_and_kept(series: Series, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Slice ``index`` in [0, 1] as ``read_unit`` gives it, and where its exception set stands
    (bool: the pixels a query puts back exactly from the slice's record); None when it has none."""
    ref = series.slices[index]
    ds, arr = _pixels(ref)
    exceptions = find_exceptions(series, ds, arr, ref.frame)
    kept = exceptions.padding | exceptions.other
    return _unit(series, ds, arr, ref.frame), (kept if kept.any() else None)


def _unit(series: Series, ds, arr: np.ndarray, frame: int | None) -> np.ndarray:
    if series.mapping == "hu":
        return (np.clip(_rescaled(ds, arr, frame), HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
    lo, span = _stored_range(series)
    return np.clip((arr.astype(np.float32) - lo) / span, 0, 1)


def _stored_range(series: Series) -> tuple[float, float]:
    if series.signed:
        return -(2.0 ** (series.bits_stored - 1)), 2.0**series.bits_stored - 1
    return 0.0, 2.0**series.bits_stored - 1


def stored_from_unit(series: Series, x: np.ndarray, ds) -> np.ndarray:
    """[0, 1] values back to the stored pixel representation of ``ds``, a slice's header (a
    frame's header holds that frame's functional group alone)."""
    if series.mapping == "hu":
        hu = x.astype(np.float64) * (HU_MAX - HU_MIN) + HU_MIN
        slope, intercept = rescale(ds, 0) or (1.0, 0.0)
        stored = (hu - intercept) / slope
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
    derived series can be written without the source files. A frame of a multi-frame instance keeps
    its own item of the per-frame functional groups (position, frame content...) and not the others'."""
    ref = series.slices[index]
    ds = _read_header(Path(ref.path))
    if ref.frame is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        for tag in ("NumberOfFrames", "PerFrameFunctionalGroupsSequence", "FrameIncrementPointer"):
            if tag in ds:
                del ds[tag]
        if per_frame is not None and ref.frame < len(per_frame):
            ds.PerFrameFunctionalGroupsSequence = Sequence([per_frame[ref.frame]])
    return ds.to_json(bulk_data_threshold=1 << 20, bulk_data_element_handler=lambda _: "")


def find_exceptions(series: Series, ds, arr: np.ndarray, frame: int | None) -> pixel_exceptions.Exceptions:
    """The pixels of a slice (``frame`` of ``ds``) the codec's mapping cannot carry (CT outside
    [-1024, 3071] HU, stored values outside the BitsStored range) and its padding
    (PixelPaddingValue, to PixelPaddingRangeLimit when given): kept exactly beside the tiles."""
    if series.mapping == "hu":
        hu = _rescaled(ds, arr, frame)
        outside = (hu < HU_MIN) | (hu > HU_MAX)
    else:
        lo, span = _stored_range(series)
        outside = (arr < lo) | (arr > lo + span)
    return pixel_exceptions.find(
        arr, outside, _int_tag(ds, "PixelPaddingValue"), _int_tag(ds, "PixelPaddingRangeLimit")
    )


def slice_exceptions(series: Series, index: int) -> bytes:
    """Slice ``index``'s exception set as its archive record (b"": none)."""
    ref = series.slices[index]
    return pixel_exceptions.encode(find_exceptions(series, *_pixels(ref), ref.frame))


def _int_tag(ds, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "" or isinstance(value, bytes):  # absent, empty, or an unresolved VR
        return None
    return int(value[0] if isinstance(value, list | tuple) else value)


def restore_slice(series: Series, header: str, x: np.ndarray, record: bytes, where: str) -> np.ndarray:
    """A decoded slice ([0, 1]) in the stored representation of its header, its exception set put back."""
    ds = pydicom.Dataset.from_json(header)
    stored = stored_from_unit(series, x, ds)
    return pixel_exceptions.restore(stored, pixel_exceptions.decode(record, stored.shape, where))


# Defined terms of Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1) name classical codecs only
# (ISO_10918_1 JPEG, ISO_15444_1 JPEG 2000, ...); calling a learned codec one of them would tell a
# viewer or a PACS rule something false. The attribute's terms are Defined Terms, which may be
# extended: this one names the archive's codec (CS: upper case, digits, underscore, 16 at most).
LOSSY_METHOD = "TTFT_LIC"
# PS3.16 codes (pydicom.sr.codedict: codes.DCM.LossyCompression, UncompressedPredecessor, ...)
LOSSY_COMPRESSION = ("113040", "DCM", "Lossy Compression")  # CID 7203 Image Derivation
UNCOMPRESSED_PREDECESSOR = ("121320", "DCM", "Uncompressed predecessor")  # CID 7202
LOSSY_COMPRESSED_PREDECESSOR = ("121330", "DCM", "Lossy compressed predecessor")  # CID 7202
SERIES_NUMBER_OFFSET = 1000  # a derived series is numbered its source's number + 1000


def _code(value: tuple[str, str, str]):
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def check_output_folder(path: str | Path) -> None:
    """Refuse, before any work, a local output folder for a derived series that cannot be written:
    a file, or a folder that cannot be made. (A URL is written locally and uploaded afterwards:
    see adapters.outputs.)"""
    from ttft_archive.adapters.raster import check_writable_folder

    text = str(path)
    if "://" in text:
        return
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise TTFTError(f"--out {text}: is a file; a DICOM query writes a folder of files")
    check_writable_folder(out, text)


@dataclass(frozen=True)
class _Query:
    """What every instance of one derived series shares."""

    series_uid: str
    date: str
    time: str
    codec: str
    method: str


def write_derived_series(
    series: Series,
    headers: dict[int, str],
    slices: dict[int, np.ndarray],
    out_dir: str | Path,
    ratios: dict[int, float],
    codec: str,
    frames: dict[int, int | None] | None = None,
    method: str = LOSSY_METHOD,
) -> list[Path]:
    """Write slices (index -> stored values, as ``restore_slice`` gives them) as a new series that
    carries the stored headers: patient, study and frame of reference kept; a new Series Instance
    UID, Series Number and SOP Instance UIDs; each instance derived (ImageType DERIVED\\SECONDARY,
    DerivationCodeSequence "Lossy Compression", DerivationDescription) from the instance it
    references in SourceImageSequence, lossy (LossyImageCompression 01, its ratio and method after
    any earlier ones), with fresh content and creation dates. ``ratios``: each slice's compression
    ratio; ``codec``: what coded it, for the description; ``frames``: the source frame of a slice
    that came from a multi-frame instance.

    The frames of a multi-frame instance with functional groups (Enhanced CT, MR, PET...) become one
    multi-frame instance, of the frames asked for (``_multiframe``): one file per frame would keep
    an IOD whose functional groups describe every frame, and fail validation. Every other slice is
    one file (``_single_frame``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now()
    query = _Query(generate_uid(), now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f"), codec, method)
    frames = frames or {}
    datasets = {index: pydicom.Dataset.from_json(headers[index]) for index in slices}
    written = []
    for n, group in enumerate(_instances(datasets)):
        if _has_frame_groups(datasets[group[0]]):
            ds = _multiframe(
                series,
                [datasets[i] for i in group],
                np.stack([slices[i] for i in group]),
                [ratios[i] for i in group],
                [frames.get(i) for i in group],
                query,
            )
        else:
            [index] = group
            ds = _single_frame(series, datasets[index], slices[index], ratios[index], frames.get(index), query)
        path = out / f"{n + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def _has_frame_groups(ds) -> bool:
    """Whether a slice's header keeps its frame's functional groups. An item ingested before they
    were kept has none: its slices are written one file each, as they were then."""
    return "PerFrameFunctionalGroupsSequence" in ds


def _instances(datasets: dict) -> list[list[int]]:
    """Slice indices grouped into output instances, in slice order: the frames of one source
    instance with functional groups together, any other slice alone."""
    groups: dict[str, list[int]] = {}
    for index in sorted(datasets):
        ds = datasets[index]
        key = f"frames of {ds.SOPInstanceUID}" if _has_frame_groups(ds) else f"slice {index}"
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def _single_frame(series: Series, ds, stored: np.ndarray, ratio: float, frame: int | None, query: _Query):
    """A single-frame derived instance: the derivation and its source at the top level."""
    reference = _source_reference(ds, frame)
    ratio_text = _ratio_text(ratio)
    _derive(series, ds, stored, ratio_text, query)
    ds.ImageType = ["DERIVED", "SECONDARY"] + list(ds.get("ImageType", ["", ""]))[2:]
    ds.SourceImageSequence = Sequence([reference])
    ds.DerivationCodeSequence = Sequence([_code(LOSSY_COMPRESSION)])
    ds.DerivationDescription = _description(query.codec, ratio_text)
    return ds


# Attributes of a source instance that do not hold for a new instance of some of its frames: it is
# no part of the source's concatenation, and the source's representative frame may not be in it.
_NOT_CARRIED = (
    "ConcatenationUID",
    "SOPInstanceUIDOfConcatenationSource",
    "InConcatenationNumber",
    "InConcatenationTotalNumber",
    "ConcatenationFrameOffsetNumber",
    "RepresentativeFrameNumber",
)


def _multiframe(series: Series, datasets: list, stored: np.ndarray, ratios: list, frames: list, query: _Query):
    """One derived multi-frame instance of the frames of one source instance (``datasets``: their
    headers, in the order written; each holds the instance's attributes and its frame's per-frame
    functional groups). The derivation is a functional group, per frame, naming the source frame
    (Derivation Image Macro, PS3.3 C.7.6.16.2.6)."""
    per_frame = []
    for ds, frame, ratio in zip(datasets, frames, ratios):
        [item] = ds.PerFrameFunctionalGroupsSequence
        derivation = pydicom.Dataset()
        derivation.DerivationDescription = _description(query.codec, _ratio_text(ratio))
        derivation.DerivationCodeSequence = Sequence([_code(LOSSY_COMPRESSION)])
        derivation.SourceImageSequence = Sequence([_source_reference(ds, frame)])
        item.DerivationImageSequence = Sequence([derivation])
        _derived_frame_type(item)
        per_frame.append(item)
    ds = datasets[0]
    source = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID)
    for keyword in _NOT_CARRIED:
        if keyword in ds:
            del ds[keyword]
    # the instance's size over its coded bytes: its frames are of one size, so the harmonic mean
    _derive(series, ds, stored, _ratio_text(len(ratios) / sum(1 / r for r in ratios)), query)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    for shared in ds.get("SharedFunctionalGroupsSequence", []):
        if "DerivationImageSequence" in shared:  # a functional group is shared or per frame, not both
            del shared.DerivationImageSequence
        _derived_frame_type(shared)
    # enhanced IODs take PRIMARY alone as value 2 (PS3.3 C.8.16.1.2): only value 1 changes
    ds.ImageType = ["DERIVED"] + list(ds.get("ImageType", []))[1:]
    # every instance the frames' Source Image Sequences name (PS3.3 C.8.15.2): only the source now
    ds.SourceImageEvidenceSequence = Sequence([_hierarchical_reference(*source)])
    return ds


def _derived_frame_type(group) -> None:
    """FrameType (value 1) DERIVED in whichever frame type group a functional groups item holds
    (CT Image Frame Type, MR Image Frame Type...): the Image Type of the instance must agree."""
    for element in group:
        if element.VR == "SQ":
            for item in element.value:
                if "FrameType" in item:
                    item.FrameType = ["DERIVED"] + list(item.FrameType)[1:]


def _hierarchical_reference(study_uid: str, series_uid: str, class_uid: str, instance_uid: str):
    """One instance as a Hierarchical SOP Instance Reference Macro item (study, series, instance)."""
    instance = pydicom.Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = class_uid, instance_uid
    series = pydicom.Dataset()
    series.SeriesInstanceUID = series_uid
    series.ReferencedSOPSequence = Sequence([instance])
    study = pydicom.Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = Sequence([series])
    return study


def _source_reference(ds, frame: int | None):
    """An item naming the source instance (and frame) of ``ds``, with the purpose of the reference:
    to be made before ``_derive`` gives ``ds`` its new identity."""
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    if frame:
        reference.ReferencedFrameNumber = frame
    purpose = LOSSY_COMPRESSED_PREDECESSOR if _was_lossy(ds) else UNCOMPRESSED_PREDECESSOR
    reference.PurposeOfReferenceCodeSequence = Sequence([_code(purpose)])
    return reference


def _was_lossy(ds) -> bool:
    return str(ds.get("LossyImageCompression", "")) == "01"


def _ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}"[:16]


def _description(codec: str, ratio_text: str) -> str:
    return (
        f"Lossy compression by the learned codec {codec}, ratio {ratio_text}:1; pixels outside the "
        "codec's range and padding restored exactly"
    )


def _derive(series: Series, ds, stored: np.ndarray, ratio_text: str, query: _Query) -> None:
    """What every derived instance gets, single- or multi-frame: its pixels, a new identity in the
    new series, fresh dates and the lossy-compression history."""
    was_lossy = _was_lossy(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.set_pixel_data(
        stored, photometric_interpretation=str(ds.PhotometricInterpretation), bits_stored=series.bits_stored
    )
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:  # hold for the pixels written, not the source's
            setattr(ds, keyword, int(stored.min() if keyword.startswith("Smallest") else stored.max()))
    for keyword in ("SmallestPixelValueInSeries", "LargestPixelValueInSeries"):
        if keyword in ds:
            del ds[keyword]
    if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
        del ds.SpecificCharacterSet  # empty is invalid (Type 1C); absent means the same default
    ds.SeriesInstanceUID = query.series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = min(int(ds.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET, 2**31 - 1)
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = query.date
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = query.time
    # successive lossy compressions keep their history, in order (PS3.3 C.7.6.1.1.5)
    before_ratio = list(_values(ds.get("LossyImageCompressionRatio"))) if was_lossy else []
    before_method = list(_values(ds.get("LossyImageCompressionMethod"))) if was_lossy else []
    method = query.method[:16]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = before_ratio + [ratio_text] if before_ratio else ratio_text
    ds.LossyImageCompressionMethod = before_method + [method] if before_method else method
    ds.SeriesDescription = (str(ds.get("SeriesDescription", "")) + " lossy").strip()[:64]


def _values(value) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]


def source_size(meta: dict) -> tuple[int, int, int]:
    """(pixels, samples, bytes) of a stored series' source: one 16-bit sample per pixel, every slice."""
    pixels = meta["slices"] * meta["rows"] * meta["cols"]
    return pixels, pixels, pixels * 2


def describe(meta: dict) -> dict:
    """What a user needs to ask for slices of a stored series: its shape (slices, rows, columns),
    modality and stored sample type."""
    return {
        "series_uid": meta["series_uid"],
        "modality": meta["modality"],
        "shape": [meta["slices"], meta["rows"], meta["cols"]],
        "dtype": f"{'int' if meta['signed'] else 'uint'}16 ({meta['bits_stored']} bits stored)",
    }
