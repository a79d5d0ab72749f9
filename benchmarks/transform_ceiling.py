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
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import base_codec  # noqa: E402

from ttft_archive.adapters.zoo import find_codec, load_codec, open_codec_by_id  # noqa: E402
from ttft_archive.configs.settings import windowed  # noqa: E402
from ttft_archive.ttft_core import TileCodec  # noqa: E402
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
def ceilings(codec_id: str, x: torch.Tensor) -> tuple[float, float]:
    """PSNR of g_s(g_a(x)) unquantised and with the latents rounded."""
    codec = open_codec_by_id(codec_id)
    y = codec.g_a(x[None])
    unquantised = codec.g_s(y).clamp(0, 1)[0]
    rounded = codec.g_s(torch.round(y)).clamp(0, 1)[0]
    return psnr(unquantised, x), psnr(rounded, x)


def code(part, curve: str, codec_id: str) -> dict:
    """Each image of ``part`` coded by ``codec_id`` as base_codec.py codes it: bpp and figures."""
    entry = find_codec(codec_id)
    codec = TileCodec(load_codec(entry), codec_id, windowed=windowed(None, entry.card.get("family")))
    per_image = {"bpp": []}
    for i, stored in enumerate(part.stored):
        nbytes, decoded = part.learned[curve](codec, i)
        per_image["bpp"].append(8 * nbytes / (stored.shape[0] * stored.shape[1]))
        for name, value in part.metrics(decoded, stored).items():
            per_image.setdefault(name, []).append(value)
    return per_image


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
        coded = {c: code(part, curve, c) for c in args.codecs.split(",")}
    else:
        coded = {c["codec"]: c["per_image"] for c in base["curves"][curve]}
    images = [to_unit(a).float() for a in part.stored]
    rows = []
    for codec_id, points in coded.items():
        per_image = [ceilings(codec_id, x) for x in images]
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
