"""How faithfully each one-channel codec keeps a region's level: flat 128x128 patches (a level
plus uniform noise of 0.02) at levels across [0, 1], coded to real bytes and decoded; the error
of the decoded mean. A codec trained on dark data (CT, raster bands) decodes bright regions off
their level, which a radiograph's bright background shows at once.

Writes benchmarks/results/level_bias.json (or --out).

    .venv/bin/python benchmarks/level_bias.py [--codecs gray16-hyperprior-q1,...] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ttft_archive.adapters.zoo import family_rate_points, find_codec, load_codec  # noqa: E402
from ttft_archive.ttft_core import TileCodec  # noqa: E402

LEVELS = (0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97)
COMMAND = ".venv/bin/python benchmarks/level_bias.py"


def level_errors(codec: TileCodec, seed: int = 0) -> dict[str, float]:
    """Decoded mean minus true mean of a flat patch, per level."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for level in LEVELS:
        patch = level + 0.02 * (torch.rand(1, 128, 128, generator=generator) - 0.5)
        decoded = codec.decompress(codec.compress(patch))
        out[f"{level:g}"] = round(float(decoded.mean() - patch.mean()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codecs", default="", help="comma-separated codec ids; default: the gray16 family")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "level_bias.json"))
    args = parser.parse_args()
    entries = [find_codec(c) for c in args.codecs.split(",")] if args.codecs else family_rate_points("gray16")
    rows = {}
    for entry in entries:
        rows[entry.codec_id] = {
            "sha256": entry.card.get("sha256"),
            "errors": level_errors(TileCodec(load_codec(entry), entry.codec_id)),
        }
        print(entry.codec_id, rows[entry.codec_id]["errors"], flush=True)
    result = {"command": COMMAND, "levels": list(LEVELS), "codecs": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
