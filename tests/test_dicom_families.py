"""Each DICOM series coded by its modality's codec family (CT by gray16, the rest by gray16med) at
the DICOM backbone where the family has it (checkerboard), unless a codec is named; an archive
keeps the codec its profile began with."""

import subprocess
import sys

import pydicom
import pytest
from pydicom.uid import generate_uid

from ttft_archive.flows.jobs.dicom import plan_dicom
from ttft_archive.ttft_core import TTFTError

from .conftest import SAMPLES

CT = SAMPLES / "ct_3slice_01.dcm"


@pytest.fixture()
def ct_and_mr(tmp_path):
    """The bundled CT slice and the same pixels as a series of another modality (an MR)."""
    ds = pydicom.dcmread(CT)
    ds.Modality, ds.SeriesInstanceUID, ds.SOPInstanceUID = "MR", generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    mr = tmp_path / "mr.dcm"
    ds.save_as(mr)
    return str(CT), str(mr)


def codecs_of(jobs) -> dict[str, str]:
    return {job.series.modality: job.coder.codec for job in jobs}


def test_each_series_takes_its_modalitys_family(ct_and_mr, tmp_path):
    url = str(tmp_path / "a.zarr")
    # gray16med has no checkerboard points: its hyperprior ones
    assert codecs_of(plan_dicom(list(ct_and_mr), url, ttft_steps=0)) == {
        "CT": "gray16-checkerboard-q4",
        "MR": "gray16med-hyperprior-q4",
    }
    # --quality picks the point within each series' family; a named codec codes every series
    assert codecs_of(plan_dicom(list(ct_and_mr), str(tmp_path / "q.zarr"), quality=2, ttft_steps=0)) == {
        "CT": "gray16-checkerboard-q2",
        "MR": "gray16med-hyperprior-q2",
    }
    # a quality the checkerboard points lack is the hyperprior's
    assert codecs_of(plan_dicom(list(ct_and_mr), str(tmp_path / "q6.zarr"), quality=6, ttft_steps=0)) == {
        "CT": "gray16-hyperprior-q6",
        "MR": "gray16med-hyperprior-q6",
    }
    hyperprior = tmp_path / "hyperprior.yaml"
    hyperprior.write_text("codec:\n  dicom_backbone: hyperprior\n")
    [ct] = plan_dicom(ct_and_mr[:1], str(tmp_path / "h.zarr"), preset=str(hyperprior), ttft_steps=0)
    assert ct.coder.codec == "gray16-hyperprior-q4"
    named = plan_dicom(list(ct_and_mr), str(tmp_path / "n.zarr"), codec="gray16-hyperprior-q1", ttft_steps=0)
    assert set(codecs_of(named).values()) == {"gray16-hyperprior-q1"}


def test_an_archive_keeps_the_codec_its_profile_began_with(ct_and_mr, tmp_path):
    """A series ingested when its modality's default was another family goes on with that codec
    (re-run, resumed), instead of being refused for a profile with other settings."""
    url = str(tmp_path / "a.zarr")
    older = tmp_path / "older.yaml"
    older.write_text("codec:\n  dicom_families: {'*': gray16}\n")
    _, mr = ct_and_mr
    [before] = plan_dicom([mr], url, preset=str(older), ttft_steps=0)
    assert before.coder.codec == "gray16-checkerboard-q4"
    [again] = plan_dicom([mr], url, preset=str(older), ttft_steps=0, tile=None)
    assert again.coder.codec == "gray16-checkerboard-q4"
    # with today's defaults (preset ct) the stored profile's codec still wins over gray16med
    [today] = plan_dicom([mr], url, preset="ct", ttft_steps=0)
    assert today.coder.codec == before.coder.codec and today.settings == before.settings
    # naming a point asks for that point of the modality's family: a new profile's settings differ
    with pytest.raises(TTFTError, match="exists with other settings"):
        plan_dicom([mr], url, quality=4, ttft_steps=0)


def test_a_family_without_codecs_is_refused_before_the_archive_exists(ct_and_mr, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("codec:\n  dicom_families: {CT: gray16, '*': gray12}\n")
    url = tmp_path / "a.zarr"
    with pytest.raises(TTFTError, match="no shipped codec of family 'gray12' \\(for modality 'MR'\\)"):
        plan_dicom(list(ct_and_mr), str(url), preset=str(bad), ttft_steps=0)
    assert not url.exists()
    no_default = tmp_path / "no_default.yaml"
    no_default.write_text("codec:\n  dicom_families: {CT: gray16}\n")
    with pytest.raises(TTFTError, match="under '\\*'"):
        plan_dicom(list(ct_and_mr), str(url), preset=str(no_default), ttft_steps=0)


def test_the_command_line_says_which_codec_coded_each_series(ct_and_mr, tmp_path):
    url = str(tmp_path / "a.zarr")
    cli = [sys.executable, "-m", "ttft_archive.flows.cli"]
    run = subprocess.run(
        [*cli, "ingest", *ct_and_mr, "--archive", url, "--ttft-steps", "0"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "gray16-checkerboard-q4" in run.stdout and "gray16med-hyperprior-q4" in run.stdout
    listed = subprocess.run([*cli, "ls", "--archive", url], capture_output=True, text=True, timeout=300)
    assert "complete  gray16-checkerboard-q4" in listed.stdout and "complete  gray16med-hyperprior-q4" in listed.stdout
