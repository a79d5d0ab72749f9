"""What a checkerboard context buys a hyperprior rate point: each checkerboard codec on the zoo path
against the hyperprior of the same family and quality, from real bytes, on the sets of
base_codec.py (rgb: the 24 Kodak images, PSNR over 8-bit RGB, and the four Landsat tiles; gray16:
every third slice of ct_lung_A0002, PSNR over the stored 12 bits), with the seconds to encode and
to decode on one thread.

    TTFT_ZOO_PATH=runs/cb/stage .venv/bin/python benchmarks/context_gain.py [--codecs ID,ID] [--out PATH]

With --out naming an earlier result, its rows for codecs not measured again are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import base_codec  # noqa: E402

from ttft_archive.adapters.zoo import list_codecs, open_codec_by_id  # noqa: E402
from ttft_archive.ttft_core import TileCodec  # noqa: E402

PARTS = {  # family -> the parts it is measured on, with its label there
    "rgb": [(lambda: base_codec.kodak(24), "learned:rgb"), (lambda: base_codec.landsat(4), "learned:rgb")],
    "gray16": [(lambda: base_codec.ct(3), "learned:gray16")],
}


class TimedCodec:
    """A TileCodec that adds up the seconds its compress and decompress calls take."""

    def __init__(self, codec: TileCodec):
        self.codec, self.encode_s, self.decode_s = codec, 0.0, 0.0

    def compress(self, tile: torch.Tensor) -> bytes:
        started = time.perf_counter()
        data = self.codec.compress(tile)
        self.encode_s += time.perf_counter() - started
        return data

    def decompress(self, data: bytes) -> torch.Tensor:
        started = time.perf_counter()
        out = self.codec.decompress(data)
        self.decode_s += time.perf_counter() - started
        return out


def measure(part: base_codec.Part, label: str, codec_id: str) -> dict:
    codec = TimedCodec(TileCodec(open_codec_by_id(codec_id), codec_id))
    bpp, quality = [], []
    for i, stored in enumerate(part.stored):
        nbytes, rec = part.learned[label](codec, i)
        bpp.append(8 * nbytes / (stored.shape[0] * stored.shape[1]))
        quality.append(part.metrics(stored, rec)[part.metric])
    return {
        "codec": codec_id,
        "bpp": float(np.mean(bpp)),
        part.metric: float(np.mean(quality)),
        "per_image_bpp": bpp,
        "encode_seconds": round(codec.encode_s, 2),
        "decode_seconds": round(codec.decode_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codecs", default=None, help="comma-separated checkerboard codec ids (default: all)")
    parser.add_argument("--out", default=str(base_codec.RESULTS / "context_gain.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = set(args.codecs.split(",")) if args.codecs else None
    grown = [e for e in list_codecs() if e.config.backbone == "checkerboard" and (not chosen or e.codec_id in chosen)]
    if not grown:
        sys.exit("context_gain: no such checkerboard codec on the zoo path (TTFT_ZOO_PATH)")
    out = Path(args.out)
    measured = {e.codec_id for e in grown}
    earlier = json.loads(out.read_text())["rows"] if out.exists() else []
    rows = [r for r in earlier if r["checkerboard"]["codec"] not in measured]
    for entry, (make_part, label) in ((e, p) for e in grown for p in PARTS[e.card["family"]]):
        part = make_part()
        plain = measure(part, label, entry.codec_id.replace("-checkerboard-", "-hyperprior-"))
        context = measure(part, label, entry.codec_id)
        saved = 1 - np.array(context["per_image_bpp"]) / np.array(plain["per_image_bpp"])
        rows.append(
            {
                "data": part.description,
                "metric": part.metric,
                "hyperprior": plain,
                "checkerboard": context,
                "card": {
                    k: entry.card.get(k) for k in ("steps", "batch", "crop", "trained", "wall_seconds", "command")
                },
                "rate_saved_percent": float(100 * (1 - context["bpp"] / plain["bpp"])),
                "rate_saved_percent_per_image_median": float(100 * np.median(saved)),
                "metric_change_db": context[part.metric] - plain[part.metric],
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("hyperprior", "checkerboard")}), flush=True)
        rows.sort(key=lambda r: (r["data"], r["hyperprior"]["bpp"]))
        out.write_text(json.dumps({"machine": "one torch thread", "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
