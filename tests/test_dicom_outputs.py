"""Derived DICOM series as a PACS takes them: the stored range back whole (pixels outside the codec's
HU range and padding restored exactly), the derivation and lossy-compression tags, new UIDs that
reference the originals, and one error line for each kind of damaged input."""

import datetime
import re
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from ttft_archive.adapters import dicom, pixel_exceptions
from ttft_archive.adapters.archive import Archive
from ttft_archive.flows.jobs.dicom import ingest_dicom, query_dicom
from ttft_archive.flows.jobs.tiles import tile_key
from ttft_archive.ttft_core import TTFTError
from ttft_archive.ttft_core.tasks import HU_MAX, HU_MIN

from .conftest import SAMPLES
from .test_archive import tree_digest

CODEC = "hyperprior-small"
CT = SAMPLES / "ct_3slice_01.dcm"
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def exceptions_of(ds) -> np.ndarray:
    """Where the source holds what the codec's HU range cannot carry, or its padding value."""
    stored = ds.pixel_array.astype(np.int64)
    hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    outside = (hu < HU_MIN) | (hu > HU_MAX)
    return outside | (stored == ds.PixelPaddingValue) if "PixelPaddingValue" in ds else outside


def round_trip(path, tmp, codec=CODEC, tile=256):
    url = str(tmp / "a.zarr")
    [report] = ingest_dicom([str(path)], url, codec=codec, tile=tile, ttft_steps=0)
    before = datetime.datetime.now()
    result = query_dicom(url, report["id"], out=str(tmp / "out"))
    after = datetime.datetime.now()
    records, _ = pixel_exceptions.read(Archive(url, create=False).root, report["id"])
    return report, result, records, (before, after)


def expected_pixels(src, result, record) -> np.ndarray:
    """The decoded values in the stored representation, the exceptions put back from the source."""
    series = dicom.Series("", (), src.Rows, src.Columns, "CT", "hu", src.BitsStored, src.PixelRepresentation == 1)
    decoded = dicom.stored_from_unit(series, result["arrays"][0], src)
    exc = exceptions_of(src)
    decoded[exc] = src.pixel_array[exc]
    assert (decoded == dicom.restore_slice(series, src.to_json(), result["arrays"][0], record, "t")).all()
    return decoded


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    report, result, records, window = round_trip(CT, tmp)
    [path] = result["files"]
    return {
        "report": report,
        "result": result,
        "records": records,
        "window": window,
        "src": pydicom.dcmread(CT),
        "out": pydicom.dcmread(path),
        "path": path,
    }


def test_padding_outside_the_field_comes_back_exactly(sample):
    src, out = sample["src"], sample["out"]
    exc = exceptions_of(src)
    # the bundled GE slice pads 21.3% of its pixels (outside the reconstruction field) with -2000,
    # -3024 HU: clipped to the codec's -1024 HU they would come back 2000 HU off
    assert exc.mean() == pytest.approx(0.2128, abs=1e-3)
    assert (src.pixel_array[exc] == src.PixelPaddingValue).all()
    assert out.PixelPaddingValue == src.PixelPaddingValue
    assert (out.pixel_array[exc] == src.pixel_array[exc]).all()
    # every other pixel is the decoded value, exactly: nothing else was changed
    assert (out.pixel_array == expected_pixels(src, sample["result"], sample["records"][0])).all()
    # the padding region, a disc's complement, is a mask of a few hundred bytes
    assert 0 < len(sample["records"][0]) < 400
    decoded = pixel_exceptions.decode(sample["records"][0], (512, 512), "t")
    assert decoded.padding_value == -2000 and not decoded.other.any() and (decoded.padding == exc).all()


def test_tuning_judges_only_the_pixels_a_query_does_not_put_back(tmp_path):
    """Per-tile tuning spends nothing on the padding outside the reconstruction field: a query
    restores it exactly from the slice's record, so the task's loss and metric see the other
    pixels only, while the codec still codes the slice as the mapping clips it."""
    import torch

    from ttft_archive.flows.jobs.dicom import plan_dicom
    from ttft_archive.flows.jobs.tiles import job_profile

    [job] = plan_dicom([str(CT)], str(tmp_path / "a.zarr"), codec=CODEC, tile=128)
    src = pydicom.dcmread(CT)
    kept = torch.from_numpy(exceptions_of(src)[:128, :128])
    assert 0 < float(kept.float().mean()) < 1  # the corner tile holds both
    pending = job.pending((0, 0, 0), None, job_profile(job))
    x = pending.x
    assert torch.equal(x[0], torch.from_numpy(dicom.read_unit(job.series, 0)[:128, :128]))  # clipped, not filled
    off_in_field = torch.where(kept, x, 1 - x)
    off_outside = torch.where(kept, 1 - x, x)
    assert float(pending.task.loss(off_outside[None], x[None])) == 0.0
    assert float(pending.task.loss(off_in_field[None], x[None])) > 0.0
    # a tile with no exception keeps the task as it is
    assert not exceptions_of(src)[256:384, 256:384].any()
    inner = job.pending((0, 2, 2), None, job_profile(job))
    assert inner.task.description == pending.task.description.removesuffix(" (valid pixels)")


def test_derived_instance_references_its_original_and_says_how_it_was_made(sample):
    src, out, report = sample["src"], sample["out"], sample["report"]
    for uid in (out.SeriesInstanceUID, out.SOPInstanceUID):
        assert UID.match(uid) and len(uid) <= 64
    assert out.SeriesInstanceUID != src.SeriesInstanceUID and out.SOPInstanceUID != src.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.StudyInstanceUID == src.StudyInstanceUID and out.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert out.SeriesNumber == src.SeriesNumber + dicom.SERIES_NUMBER_OFFSET
    assert list(out.ImageType) == ["DERIVED", "SECONDARY"] + list(src.ImageType)[2:]

    [ref] = out.SourceImageSequence
    assert ref.ReferencedSOPClassUID == src.SOPClassUID and ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert "ReferencedFrameNumber" not in ref
    [purpose] = ref.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121320", "DCM")
    [code] = out.DerivationCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("113040", "DCM", "Lossy Compression")

    # the ratio counts the slice's tiles and its exception record
    ratio = 512 * 512 * 2 / (report["bytes"] + len(sample["records"][0]))
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == dicom.LOSSY_METHOD
    assert float(out.LossyImageCompressionRatio) == pytest.approx(ratio, abs=0.01)
    assert report["codec"] in out.DerivationDescription
    assert f"ratio {out.LossyImageCompressionRatio}:1" in out.DerivationDescription

    before, after = sample["window"]
    for kind in ("Content", "InstanceCreation", "Series"):
        date, time = out[f"{kind}Date"].value, out[f"{kind}Time"].value
        made = datetime.datetime.strptime(date + time, "%Y%m%d%H%M%S.%f")
        assert before <= made <= after, kind
    assert out.StudyDate == src.StudyDate and out.AcquisitionTime == src.AcquisitionTime


def added_faults(derived, source) -> set[str]:
    """What dicom3tools' IOD checker finds in a derived instance and not in its source, but the
    documented private compression method (skips the test without dciodvfy)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH")

    def faults(path) -> set[str]:
        text = subprocess.run([tool, str(path)], capture_output=True, text=True).stderr
        return {line for line in text.splitlines() if line.startswith(("Error", "Warning"))}

    known = (
        f"Warning - Unrecognized defined term <{dicom.LOSSY_METHOD}> for value 1 of attribute "
        "<Lossy Image Compression Method>"
    )
    found = faults(derived) - faults(source)
    assert known in found
    return found - {known}


def test_dciodvfy_finds_no_fault_the_source_does_not_have(sample):
    # the GE source has a few of its own (no Laterality, an empty SpecificCharacterSet)
    assert added_faults(sample["path"], CT) == set()


def test_metal_and_values_below_the_range_come_back_exactly(tmp_path):
    """A crop of the sample given metal (4000 HU and the largest int16), values below -1024 HU that
    are not padding, and a padding range: each comes back exactly, the rest as decoded."""
    ds = pydicom.dcmread(CT)
    stored = ds.pixel_array[192:320, 192:320].copy()
    stored[10:14, 20:30] = 4000 + 1024  # metal, stored = HU + 1024
    stored[50, 50] = np.iinfo(np.int16).max
    stored[60:62, 0:5] = -1500 + 1024
    stored[0:3, :] = -2000  # the padding value
    ds.set_pixel_data(stored, "MONOCHROME2", 16)
    src = tmp_path / "crop.dcm"
    ds.save_as(src)
    report, result, records, _ = round_trip(src, tmp_path, tile=128)
    out = pydicom.dcmread(result["files"][0])
    exc = exceptions_of(ds)
    assert exc.sum() == 40 + 1 + 10 + 3 * 128
    assert (out.pixel_array[exc] == stored[exc]).all()
    assert (out.pixel_array == expected_pixels(ds, result, records[0])).all()
    decoded = pixel_exceptions.decode(records[0], stored.shape, "t")
    assert decoded.padding.sum() == 3 * 128 and sorted(set(decoded.values)) == [-476, 5024, 32767]
    # the crop shares the sample's series UID: its tile was coded from its own pixels all the same
    [series] = dicom.find_series([src])
    profile = Archive(str(tmp_path / "a.zarr"), create=False).profile(report["id"], "pixel")
    assert profile.key((0, 0, 0)) == tile_key(dicom.read_unit(series, 0), profile.settings)

    # an item ingested before exceptions were kept gets them on the next ingest, tiles untouched
    root = Archive(str(tmp_path / "a.zarr")).root
    del root["items"][report["id"]][pixel_exceptions.ARRAY]
    [again] = ingest_dicom([str(src)], str(tmp_path / "a.zarr"), codec=CODEC, tile=128, ttft_steps=0)
    assert again["written_tiles"] == 0
    assert pixel_exceptions.read(root, report["id"])[0] == records
    digest = tree_digest(tmp_path / "a.zarr")
    ingest_dicom([str(src)], str(tmp_path / "a.zarr"), codec=CODEC, tile=128, ttft_steps=0)
    assert tree_digest(tmp_path / "a.zarr") == digest


def test_real_ct_slices_round_trip(shared_data, tmp_path):
    """Another slice of the GE series through a shipped CT codec: its padding exact, the rest within
    the codec's error; a Philips slice without padding has no exception and comes back as decoded."""
    path = shared_data / "medical" / "ct_3slice" / "02.dcm"
    report, result, records, _ = round_trip(path, tmp_path / "ge", codec="gray16-hyperprior-q3")
    src, out = pydicom.dcmread(path), pydicom.dcmread(result["files"][0])
    exc = exceptions_of(src)
    assert exc.mean() == pytest.approx(0.2128, abs=1e-3)
    assert (out.pixel_array[exc] == src.pixel_array[exc]).all()
    assert (out.pixel_array == expected_pixels(src, result, records[0])).all()
    error = np.abs(out.pixel_array.astype(np.int64) - src.pixel_array)[~exc]
    assert error.mean() < 35  # HU; 26.5 measured at 0.36 bpp
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    if shutil.which("dciodvfy"):
        assert added_faults(result["files"][0], path) == set()

    path = shared_data / "medical" / "ct_lung_A0001" / "1-30.dcm"
    report, result, records, _ = round_trip(path, tmp_path / "philips")
    src, out = pydicom.dcmread(path), pydicom.dcmread(result["files"][0])
    assert not exceptions_of(src).any() and records == [b""]
    assert (out.pixel_array == expected_pixels(src, result, b"")).all()
    assert float(out.LossyImageCompressionRatio) == pytest.approx(512 * 512 * 2 / report["bytes"], abs=0.01)


def test_enhanced_ct_frames_come_back_as_one_enhanced_instance(shared_data, tmp_path):
    """The frames of an Enhanced CT instance come back as one Enhanced CT instance of the frames
    asked for: their own per-frame functional groups in order, each deriving from its source frame,
    the shared groups kept (frame type DERIVED), the pixels as decoded; dciodvfy finds nothing the
    source does not have."""
    path = shared_data / "medical" / "singles" / "eCT_Supplemental.dcm"
    url = str(tmp_path / "a.zarr")
    [report] = ingest_dicom([str(path)], url, codec=CODEC, tile=256, ttft_steps=0)
    src = pydicom.dcmread(path)
    [series] = dicom.find_series([path])
    records, _ = pixel_exceptions.read(Archive(url, create=False).root, report["id"])
    for slices, chosen in ((None, [0, 1]), ("1", [1])):
        result = query_dicom(url, report["id"], slices=slices, out=str(tmp_path / f"{len(chosen)}_frames"))
        [file] = result["files"]  # one instance per source instance
        out = pydicom.dcmread(file)
        assert out.SOPClassUID == src.SOPClassUID and out.SOPInstanceUID != src.SOPInstanceUID
        assert out.SeriesInstanceUID != src.SeriesInstanceUID and out.StudyInstanceUID == src.StudyInstanceUID
        assert out.SeriesNumber == src.SeriesNumber + dicom.SERIES_NUMBER_OFFSET
        assert out.NumberOfFrames == len(chosen) and out.LossyImageCompression == "01"
        assert out.LossyImageCompressionMethod == dicom.LOSSY_METHOD
        # enhanced images take four values, the second PRIMARY; the frame type says DERIVED as well
        assert list(out.ImageType) == ["DERIVED"] + list(src.ImageType)[1:]
        [shared], [src_shared] = out.SharedFunctionalGroupsSequence, src.SharedFunctionalGroupsSequence
        [frame_type] = shared.CTImageFrameTypeSequence
        assert list(frame_type.FrameType) == ["DERIVED"] + list(src_shared.CTImageFrameTypeSequence[0].FrameType)[1:]
        for element in src_shared:
            if element.keyword != "CTImageFrameTypeSequence":
                assert shared[element.tag] == element, element.keyword
        [evidence] = out.SourceImageEvidenceSequence
        assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
        assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            src.SOPInstanceUID
        )

        pixels = out.pixel_array.reshape(len(chosen), out.Rows, out.Columns)
        for k, s in enumerate(chosen):
            frame = series.slices[s].frame + 1
            item, src_item = out.PerFrameFunctionalGroupsSequence[k], src.PerFrameFunctionalGroupsSequence[frame - 1]
            for element in src_item:  # the frame's own groups (position, frame content), in order
                assert item[element.tag] == element, element.keyword
            [derivation] = item.DerivationImageSequence
            [ref] = derivation.SourceImageSequence
            assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID and ref.ReferencedFrameNumber == frame
            [code] = derivation.DerivationCodeSequence
            assert (code.CodeValue, code.CodingSchemeDesignator) == ("113040", "DCM")
            stored = dicom.stored_from_unit(series, result["arrays"][s], src)
            expected = pixel_exceptions.restore(stored, pixel_exceptions.decode(records[s], stored.shape, "t"))
            assert (pixels[k] == expected).all()
        if shutil.which("dciodvfy"):
            assert added_faults(file, path) == set()


def _cut(tmp_path, name: str, size: int):
    data = CT.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[:size])
    return path


def test_each_damaged_input_gets_its_own_line(tmp_path):
    data = CT.read_bytes()
    pixels_at = len(data) - 512 * 512 * 2  # the sample ends with its pixel data (implicit VR)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    text = tmp_path / "notes.dcm"
    text.write_text("these are not the pixels you are looking for\n" * 20)
    ds = pydicom.dcmread(CT)
    del ds.PixelData
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare)
    cases = {
        empty: "empty.dcm: the file is empty",
        text: "notes.dcm: not a readable DICOM file",
        _cut(tmp_path, "in_pixels.dcm", len(data) - 1000): r"in_pixels.dcm: the DICOM file is truncated "
        r"\(it ends inside element \(7FE0,0010\), 1000 bytes short\)",
        _cut(tmp_path, "in_pixel_header.dcm", pixels_at - 4): "in_pixel_header.dcm: the DICOM file is truncated",
        _cut(tmp_path, "in_header.dcm", 1000): "in_header.dcm: the DICOM file is truncated",
        _cut(tmp_path, "in_meta.dcm", 200): "in_meta.dcm: the DICOM file is truncated",
        bare: "bare.dcm: the DICOM file has no pixel data",
    }
    for path, message in cases.items():
        with pytest.raises(TTFTError, match=message) as found:
            dicom.find_series([path])
        assert "\n" not in str(found.value)
        with pytest.raises(TTFTError, match=message):  # the same line where pixels are read
            dicom.read_hu(path)
    with pytest.raises(TTFTError, match="in_pixels.dcm: the DICOM file is truncated"):
        ingest_dicom([str(tmp_path / "in_pixels.dcm")], str(tmp_path / "a.zarr"), codec=CODEC, ttft_steps=0)
    assert not (tmp_path / "a.zarr").exists()


def test_a_damaged_exception_record_is_refused():
    exc = pixel_exceptions.find(np.array([[-2000, 5], [7000, 1]]), np.array([[1, 0], [1, 0]], bool), -2000)
    record = pixel_exceptions.encode(exc)
    back = pixel_exceptions.decode(record, (2, 2), "t")
    assert back.padding.tolist() == [[True, False], [False, False]] and back.values.tolist() == [7000]
    for bad, shape in ((record[:-1] + bytes([record[-1] ^ 1]), (2, 2)), (record, (2, 3)), (record[:5], (2, 2))):
        with pytest.raises(TTFTError, match="item x slice 0: pixel exceptions unreadable"):
            pixel_exceptions.decode(bad, shape, "item x slice 0")
    with pytest.raises(TTFTError, match="outside int8"):
        pixel_exceptions.restore(np.zeros((2, 2), np.int8), back)


def test_padding_inside_the_codec_range_is_an_exception_too():
    """A padding value the codec could code (0 stored, -1024 HU) still comes back as padding, and a
    padding range (PixelPaddingRangeLimit) keeps its values."""
    stored = np.array([[0, 0, 5, 6], [1, 2, 3, 900]])
    exc = pixel_exceptions.find(stored, np.zeros(stored.shape, bool), 0, 3)
    assert exc.padding.sum() == 2 and exc.other.tolist() == [[0, 0, 0, 0], [1, 1, 1, 0]]
    back = pixel_exceptions.decode(pixel_exceptions.encode(exc), stored.shape, "t")
    restored = pixel_exceptions.restore(np.full(stored.shape, 77, np.uint16), back)
    assert restored.tolist() == [[0, 0, 77, 77], [1, 2, 3, 77]]
