"""Where a family loses to JPEG 2000: in its transforms or in its quantisation.

For each rate point, on each image of a base-codec part (the 24 Kodak images for the rgb family,
the 30 CT slices for gray16): the PSNR of the synthesis of the analysis
with no quantisation at all (the transforms' ceiling: no rate spent can do better), with the
latents rounded (what the bitstream holds, less the entropy model's mean offsets), and the real
coding's PSNR and bpp from benchmarks/results/base_codec.json (the part's headline PSNR), beside JPEG 2000's PSNR at that
same bpp on that image (its swept curve there, interpolated in log bpp). Where the ceiling sits
below JPEG 2000's PSNR at the codec's rate, no tuning of the latents or of the entropy model
closes the gap; the transforms need more capacity or training. ``--codecs`` codes the part's
images here with the codecs named (a trained one staged on TTFT_ZOO_PATH, say) as
base_codec.py codes them, in place of the family's figures from base_codec.json.

    .venv/bin/python benchmarks/transform_ceiling.py [--part kodak|ct] [--codecs ID,...] [--threads 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import base_codec  # noqa: E402

from ttft_archive.adapters.zoo import find_codec, open_codec_by_id  # noqa: E402
from ttft_archive.ttft_core.backbones import MeanScaleCodec  # noqa: E402
from ttft_archive.ttft_core.metrics import psnr  # noqa: E402

BASE = ROOT / "benchmarks" / "results" / "base_codec.json"
# part -> (its learned family's curve, the part's images as base_codec reads them, stored -> [0, 1])
PARTS = {
    "kodak": ("learned:rgb", lambda: base_codec.kodak(24), lambda a: torch.from_numpy(a).permute(2, 0, 1) / 255),
    "ct": ("learned:gray16", lambda: base_codec.ct(1), lambda a: torch.from_numpy(a.astype(np.float32))[None] / 4095),
}


def jpeg2000_at(curves: list[dict], image: int, bpp: float, metric: str) -> float:
    """JPEG 2000's PSNR on one image at ``bpp``: its swept points, interpolated in log bpp."""
    rates = np.log([c["per_image"]["bpp"][image] for c in curves])
    order = np.argsort(rates)
    figures = np.array([c["per_image"][metric][image] for c in curves])[order]
    return float(np.interp(np.log(bpp), rates[order], figures))


@torch.no_grad()
def ceilings(codec: MeanScaleCodec, x: torch.Tensor) -> tuple[float, float]:
    """PSNR of g_s(g_a(x)) unquantised and with the latents rounded."""
    y = codec.g_a(x[None])
    unquantised = codec.g_s(y).clamp(0, 1)[0]
    rounded = codec.g_s(torch.round(y)).clamp(0, 1)[0]
    return psnr(unquantised, x), psnr(rounded, x)


def coded_here(part: base_codec.Part, curve: str, codec_ids: list[str]) -> dict[str, dict]:
    """Each codec's per-image bpp and figures on ``part``, coded by base_codec.py's own loop."""
    named = replace(part, families={curve: [find_codec(c) for c in codec_ids]})
    pixels = [a.shape[0] * a.shape[1] for a in part.stored]
    return {p["codec"]: p["per_image"] for p in base_codec._learned_curves(named, pixels)[curve]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="kodak", choices=sorted(PARTS))
    parser.add_argument(
        "--codecs",
        default=None,
        help="codec ids to code here (a staged one on TTFT_ZOO_PATH); default: the part's family",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/transform_ceiling_PART.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    curve, read, to_unit = PARTS[args.part]
    base, part = json.loads(BASE.read_text())[args.part], read()
    if args.codecs:
        coded = coded_here(part, curve, args.codecs.split(","))
    else:
        coded = {c["codec"]: c["per_image"] for c in base["curves"][curve]}
    images = [to_unit(a).float() for a in part.stored]
    rows = []
    for codec_id, points in coded.items():
        codec = open_codec_by_id(codec_id)  # once: it reads and checks the weights
        per_image = [ceilings(codec, x) for x in images]
        jpeg2000 = [jpeg2000_at(base["curves"]["jpeg2000"], i, b, base["metric"]) for i, b in enumerate(points["bpp"])]
        rows.append(
            {
                "codec": codec_id,
                "bpp": float(np.mean(points["bpp"])),
                "psnr_coded": float(np.mean(points[base["metric"]])),
                "psnr_rounded": float(np.mean([r for _, r in per_image])),
                "psnr_unquantised": float(np.mean([u for u, _ in per_image])),
                "psnr_jpeg2000_same_bpp": float(np.mean(jpeg2000)),
            }
        )
        print(rows[-1], flush=True)
    result = {
        "command": "python benchmarks/transform_ceiling.py " + " ".join(sys.argv[1:]),
        "data": base["data"],
        "coded_from": "coded here" if args.codecs else f"benchmarks/results/base_codec.json, part {args.part}",
        "rows": rows,
    }
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"transform_ceiling_{args.part}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
