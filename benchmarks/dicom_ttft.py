"""A DICOM image through the archive with and without per-tile tuning: a real ingest (tiles of
256, the settings' TTFT steps or none) and a real query, bytes and PSNR over the stored bits of
the decoded DICOM file against the source. For the images the base codec codes badly (the CR
radiograph of docs/evaluation.md): how much the tuning recovers, and at what encode time.

    .venv/bin/python benchmarks/dicom_ttft.py [--source PATH] [--codecs q1,q3] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ttft_archive.flows.jobs.dicom import ingest_dicom, query_dicom  # noqa: E402

SOURCE = ROOT.parent / "shared" / "data" / "medical" / "singles" / "RG3_UNCI.dcm"


def measure(source: Path, codec: str, ttft_steps: int | None, work: Path) -> dict:
    """One ingest and query; ``ttft_steps`` None: the settings' default tuning."""
    url = work / f"{codec}-{ttft_steps}.zarr"
    shutil.rmtree(url, ignore_errors=True)
    started = time.perf_counter()
    [report] = ingest_dicom([str(source)], str(url), codec=codec, tile=256, ttft_steps=ttft_steps)
    seconds = time.perf_counter() - started
    result = query_dicom(str(url), report["id"], out=str(work / f"{codec}-{ttft_steps}-out"))
    src = pydicom.dcmread(source)
    decoded = pydicom.dcmread(result["files"][0]).pixel_array.astype(np.float64)
    mse = float(np.mean((decoded - src.pixel_array.astype(np.float64)) ** 2))
    peak = 2.0 ** int(src.BitsStored) - 1
    return {
        "codec": codec,
        "ttft_steps": ttft_steps if ttft_steps is not None else "default",
        "bytes": report["bytes"],
        "bpp": 8 * report["bytes"] / decoded.size,
        "psnr_stored_bits": 10 * np.log10(peak**2 / mse),
        "ingest_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(SOURCE))
    parser.add_argument("--codecs", default="gray16-hyperprior-q1,gray16-hyperprior-q3")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dicom_ttft_cr.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for codec in args.codecs.split(","):
            for steps in (0, None):
                rows.append(measure(Path(args.source), codec, steps, Path(work)))
                print(rows[-1], flush=True)
    Path(args.out).write_text(
        json.dumps({"source": args.source, "machine": "2 CPU cores", "rows": rows}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
