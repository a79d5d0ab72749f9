import pydicom
import pytest

from ttft_archive.adapters import dicom
from ttft_archive.flows.jobs.dicom import ingest_dicom, parse_slices, query_dicom
from ttft_archive.ttft_core import TTFTError

from .conftest import SAMPLES
from .test_archive import tree_digest

CODEC = "hyperprior-small"
CT = SAMPLES / "ct_3slice_01.dcm"


def test_derived_series_keeps_patient_and_study_and_marks_the_loss(tmp_path):
    url = str(tmp_path / "a.zarr")
    [report] = ingest_dicom([str(CT)], url, codec=CODEC, tile=200, ttft_steps=0)
    assert report["complete"] and report["tiles"] == 9 and report["ratio"] > 1
    before = tree_digest(tmp_path / "a.zarr")
    [again] = ingest_dicom([str(CT)], url, codec=CODEC, tile=200, ttft_steps=0)
    assert again["written_tiles"] == 0 and tree_digest(tmp_path / "a.zarr") == before
    result = query_dicom(url, report["id"], out=str(tmp_path / "out"))
    [path] = result["files"]
    src, out = pydicom.dcmread(CT), pydicom.dcmread(path)
    for tag in (
        "PatientID",
        "PatientName",
        "StudyInstanceUID",
        "Modality",
        "ImagePositionPatient",
        "BitsStored",
        "PixelRepresentation",
        "RescaleIntercept",
        "RescaleSlope",
        "Rows",
        "Columns",
    ):
        assert out[tag].value == src[tag].value, tag
    assert out.SeriesInstanceUID != src.SeriesInstanceUID and out.SOPInstanceUID != src.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "TTFT_LIC"
    # the slice's tiles and its record of padding pixels (tests/test_dicom_outputs.py)
    assert 1 < float(out.LossyImageCompressionRatio) < 512 * 512 * 2 / report["bytes"]
    assert out.pixel_array.shape == (512, 512) and out.pixel_array.dtype == src.pixel_array.dtype


def test_series_order_slices_and_multiframe(shared_data, tmp_path):
    [series] = dicom.find_series([shared_data / "medical" / "ct_lung_A0002"])
    assert len(series.slices) == 30 and series.mapping == "hu"
    z = [float(pydicom.dcmread(s.path, stop_before_pixels=True).ImagePositionPatient[2]) for s in series.slices]
    assert z == sorted(z)
    [mr] = dicom.find_series([shared_data / "medical" / "singles" / "emri_small.dcm"])
    assert len(mr.slices) == 10 and mr.mapping == "stored" and mr.slices[3].frame == 3
    url = str(tmp_path / "a.zarr")
    [report] = ingest_dicom(
        [str(shared_data / "medical" / "singles" / "emri_small.dcm")], url, codec=CODEC, ttft_steps=0
    )
    result = query_dicom(url, report["id"], slices="2:5", out=str(tmp_path / "mr"))
    assert len(result["files"]) == 3 and {t[0] for t in result["tiles_read"]} == {2, 3, 4}
    assert pydicom.dcmread(result["files"][0]).pixel_array.shape == (64, 64)
    source = pydicom.dcmread(shared_data / "medical" / "singles" / "emri_small.dcm", stop_before_pixels=True)
    for frame, path in zip((3, 4, 5), result["files"]):  # each instance references its source frame
        [ref] = pydicom.dcmread(path).SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID and ref.ReferencedFrameNumber == frame


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")  # the damage under test
def test_compressed_transfer_syntax_is_read_and_damaged_files_are_refused(shared_data):
    [cr] = dicom.find_series([shared_data / "medical" / "singles" / "RG3_J2KR.dcm"])
    assert dicom.read_unit(cr, 0).shape == (1760, 1760)
    with pytest.raises(TTFTError, match="too_short.dcm: the DICOM file is truncated"):
        dicom.find_series([shared_data / "medical" / "singles" / "emri_small_jpeg_2k_lossless_too_short.dcm"])


def test_slice_ranges_and_bad_sources(tmp_path):
    assert list(parse_slices("2:5", 10)) == [2, 3, 4] and list(parse_slices(None, 3)) == [0, 1, 2]
    assert list(parse_slices("7", 10)) == [7] and list(parse_slices(":2", 10)) == [0, 1]
    for bad in ("5:2", "x", "12"):
        with pytest.raises(TTFTError, match="--slices"):
            parse_slices(bad, 10)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 200)
    with pytest.raises(TTFTError, match="junk.dcm"):
        ingest_dicom([str(junk)], str(tmp_path / "a.zarr"), codec=CODEC, ttft_steps=0)
    assert not (tmp_path / "a.zarr").exists()


def test_an_enhanced_ct_goes_through_hounsfield_units_by_its_pixel_value_transformation(shared_data):
    """An Enhanced CT keeps its rescale in a functional group, not at the top level: the codec
    sees it in Hounsfield units, as every other CT (by the BitsStored range, 0-1196 of 65535, it
    saw an almost black image and cost 3.7 times JPEG 2000's bytes instead of 1.13 times); a
    frame's own transformation comes before the shared one."""
    path = shared_data / "medical" / "singles" / "eCT_Supplemental.dcm"
    [series] = dicom.find_series([path])
    ds = pydicom.dcmread(path)
    assert "RescaleIntercept" not in ds and series.mapping == "hu"
    assert dicom.rescale(ds, 1) == (1.0, -1024.0)
    hu = ds.pixel_array[1].astype(float) - 1024
    assert dicom.read_unit(series, 1) == pytest.approx((hu.clip(-1024, 3071) + 1024) / 4095, abs=1e-6)
    transform = pydicom.Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = "-1000", "2", "HU"
    ds.PerFrameFunctionalGroupsSequence[1].PixelValueTransformationSequence = [transform]
    assert dicom.rescale(ds, 1) == (2.0, -1000.0) and dicom.rescale(ds, 0) == (1.0, -1024.0)
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    assert dicom.rescale(ds, 0) is None


def test_a_slice_is_one_tile_unless_asked_and_an_item_keeps_its_grid(tmp_path):
    url = str(tmp_path / "a.zarr")
    [report] = ingest_dicom([str(CT)], url, codec=CODEC, ttft_steps=0)
    assert report["tiles"] == 1  # the 512x512 slice as one tile: the DICOM default
    url = str(tmp_path / "b.zarr")
    [first] = ingest_dicom([str(CT)], url, codec=CODEC, tile=256, ttft_steps=0)
    # a second profile of the item, no tile named: the item's own grid, not the default's
    [second] = ingest_dicom([str(CT)], url, codec=CODEC, task="ct-lung-window", ttft_steps=0)
    assert first["tiles"] == second["tiles"] == 4 and second["profile"] == "ct-lung-window"
