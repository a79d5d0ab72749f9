"""infra/medical_training_data.py copies images out of package archives unchanged, records where
each came from, and never copies an evaluation image (archives built here: no network)."""

import importlib.util
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def gather_module():
    spec = importlib.util.spec_from_file_location("medical_training_data", ROOT / "infra" / "medical_training_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "wheel_pkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("wheel_pkg/data/mr.dcm", b"MR bytes")
        z.writestr("wheel_pkg/data/MR2_UNCI.dcm", b"evaluation")
    with tarfile.open(cache / "sdist-pkg-2.0.tar.gz", "w:gz") as t:
        info = tarfile.TarInfo("sdist-pkg-2.0/sdist_pkg/data/dx.dcm")
        info.size = len(b"DX bytes")
        t.addfile(info, io.BytesIO(b"DX bytes"))
    return cache


def test_images_are_copied_unchanged_with_their_provenance(gather_module, tmp_path):
    gather_module.SOURCES = [
        ("wheel-pkg", "1.0", "MIT", [("wheel_pkg/data/mr.dcm", "an MR")]),
        ("sdist-pkg", "2.0", "BSD", [("sdist_pkg/data/dx.dcm", "a radiograph")]),
    ]
    out = tmp_path / "medical"
    assert gather_module.gather(out, _cache(tmp_path)) == ["mr.dcm", "dx.dcm"]
    assert (out / "mr.dcm").read_bytes() == b"MR bytes" and (out / "dx.dcm").read_bytes() == b"DX bytes"
    sources = (out / "SOURCES.md").read_text()
    assert "| mr.dcm | an MR | wheel-pkg 1.0, `wheel_pkg/data/mr.dcm` | MIT |" in sources
    assert "| dx.dcm | a radiograph | sdist-pkg 2.0, `sdist_pkg/data/dx.dcm` | BSD |" in sources
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_an_evaluation_image_is_refused_and_the_set_left_as_it_was(gather_module, tmp_path):
    out = tmp_path / "medical"
    out.mkdir()
    (out / "kept.dcm").write_bytes(b"earlier")
    gather_module.SOURCES = [("wheel-pkg", "1.0", "MIT", [("wheel_pkg/data/MR2_UNCI.dcm", "the benchmark's MR")])]
    with pytest.raises(SystemExit, match="MR2_UNCI.dcm is an evaluation image"):
        gather_module.gather(out, _cache(tmp_path))
    assert [p.name for p in out.iterdir()] == ["kept.dcm"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "medical"]  # nothing staged


@pytest.mark.parametrize(
    "source, archive",
    [(("sdist-pkg", "2.0"), "sdist-pkg-2.0.tar.gz"), (("wheel-pkg", "1.0"), "wheel_pkg-1.0-py3-none-any.whl")],
)
def test_a_file_missing_from_its_archive_leaves_no_staging(gather_module, tmp_path, source, archive):
    gather_module.SOURCES = [(*source, "MIT", [("pkg/data/gone.dcm", "absent")])]
    cache = _cache(tmp_path)
    with pytest.raises(SystemExit, match=f"{archive} has no pkg/data/gone.dcm"):
        gather_module.gather(tmp_path / "medical", cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
