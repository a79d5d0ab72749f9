"""A DICOM image through the archive with and without per-tile tuning: a real ingest (tiles of
256, or --tile) and a real query, bytes and PSNR over the stored bits of the decoded DICOM file against the
source. For the images the base codec codes badly (the CR radiograph and the large MR of
docs/evaluation.md): how much the tuning recovers, and at what encode time.

``--presets``: ``none`` (no tuning), ``ct`` (the DICOM default: 40 adapter + 40 latent steps) and
``thorough`` (40 + 200 annealed latent steps), each at every codec of ``--codecs``. With
``--part`` (a part of benchmarks/results/base_codec.json measured on the same file, such as
mr12), each preset's curve also gets its BD-rate against JPEG 2000's curve on that image.

    .venv/bin/python benchmarks/dicom_ttft.py [--source PATH] [--codecs q1,q3] [--presets none,ct]
        [--part NAME] [--tile 256] [--out PATH]
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
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ttft_archive.adapters import dicom  # noqa: E402
from ttft_archive.adapters.dicom import read_hu  # noqa: E402
from ttft_archive.adapters.normalise import HU_MAX, HU_MIN  # noqa: E402
from ttft_archive.flows.jobs.dicom import ingest_dicom, query_dicom  # noqa: E402
from ttft_archive.ttft_core.metrics import bd_rate, psnr  # noqa: E402

BASE_CODEC = ROOT / "benchmarks" / "results" / "base_codec.json"

SOURCE = ROOT.parent / "shared" / "data" / "medical" / "singles" / "RG3_UNCI.dcm"


def measure(source: Path, codec: str, preset: str, work: Path, tile: int = 256) -> dict:
    """One ingest and query under a settings preset; ``none``: the ct preset without tuning."""
    url = work / f"{codec}-{preset}.zarr"
    shutil.rmtree(url, ignore_errors=True)
    started = time.perf_counter()
    tuning = {"ttft_steps": 0, "preset": "ct"} if preset == "none" else {"preset": preset}
    [report] = ingest_dicom([str(source)], str(url), codec=codec, tile=tile, **tuning)
    seconds = time.perf_counter() - started
    result = query_dicom(str(url), report["id"], out=str(work / f"{codec}-{preset}-out"))
    [series] = dicom.find_series([source])
    name, original, decoded, peak = compared(series, source, Path(result["files"][0]))
    return {
        "codec": codec,
        "preset": preset,
        "tile": tile,
        "bytes": report["bytes"],
        "bpp": 8 * report["bytes"] / decoded.size,
        name: psnr(torch.from_numpy(decoded), torch.from_numpy(original), peak=peak),
        "ingest_seconds": round(seconds, 1),
    }


def compared(series: dicom.Series, source: Path, decoded: Path) -> tuple[str, np.ndarray, np.ndarray, float]:
    """(figure name, source, decoded, peak) as base_codec.py compares this file: a CT in HU + 1024
    at 12 bits (what the mapping clips to), anything else in its stored values over the stored bits."""
    if series.mapping == "hu":
        hu12 = [np.clip(np.rint(read_hu(f)), HU_MIN, HU_MAX) - HU_MIN for f in (source, decoded)]
        return "psnr_hu_12bit", hu12[0], hu12[1], HU_MAX - HU_MIN
    stored = [pydicom.dcmread(f).pixel_array.astype(np.float64) for f in (source, decoded)]
    return "psnr_stored_bits", stored[0], stored[1], 2.0**series.bits_stored - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(SOURCE))
    parser.add_argument("--codecs", default="gray16-hyperprior-q1,gray16-hyperprior-q3")
    parser.add_argument("--presets", default="none,ct", help="none, ct (the DICOM default), thorough, ...")
    parser.add_argument("--part", default=None, help="the base_codec.json part of this file, for BD-rates")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--tile",
        type=int,
        default=256,
        help="the ingest's tile side (256: what the results here used; an ingest's own default is 512)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dicom_ttft_cr.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for codec in args.codecs.split(","):
            for preset in args.presets.split(","):
                rows.append(measure(Path(args.source), codec, preset, Path(work), args.tile))
                print(rows[-1], flush=True)
    result = {"source": args.source, "machine": f"{torch.get_num_threads()} torch threads", "rows": rows}
    if args.part:
        result["bd_rate_vs_jpeg2000_percent"] = against_jpeg2000(rows, args.part, Path(args.source))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def against_jpeg2000(rows: list[dict], part: str, source: Path) -> dict:
    """Each preset's curve (bpp, PSNR over the stored bits) against JPEG 2000's on the same image,
    as base_codec.py measured it: the per-image BD-rate of that image."""
    measured = json.loads(BASE_CODEC.read_text())[part]
    names = measured["images"]
    if len(names) == 1:
        index = 0
    elif source.stem in names:  # a part of several images (the CT series' slices): this file's own
        index = names.index(source.stem)
    else:
        raise SystemExit(f"dicom_ttft: --part {part} holds {len(names)} images, none of them {source.stem}")
    metric = measured["metric"]
    theirs = [
        {"bpp": p["per_image"]["bpp"][index], "metric": p["per_image"][metric][index]}
        for p in measured["curves"]["jpeg2000"]
    ]
    return bd_rates(rows, theirs)


def bd_rates(rows: list[dict], theirs: list[dict]) -> dict:
    """Each preset's curve of ``rows`` (bpp and its PSNR figure) against ``theirs`` (bpp and
    metric of the same image): its BD-rate."""
    figure = next(k for k in rows[0] if k.startswith("psnr_"))
    out = {}
    for preset in dict.fromkeys(r["preset"] for r in rows):
        ours = [r for r in rows if r["preset"] == preset]
        out[preset] = bd_rate(
            [p["bpp"] for p in theirs],
            [p["metric"] for p in theirs],
            [r["bpp"] for r in ours],
            [r[figure] for r in ours],
        )
    return out


if __name__ == "__main__":
    main()
