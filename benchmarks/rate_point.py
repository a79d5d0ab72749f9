"""One gray16 rate point on every evaluation part of base_codec.py, read against the JPEG 2000
curves stored in benchmarks/results/base_codec.json: the quick check of a trained candidate
(put its export folder on TTFT_ZOO_PATH) beside the shipped codec of the same id, before a whole
family is measured again.

    TTFT_ZOO_PATH=runs/stage .venv/bin/python benchmarks/rate_point.py gray16-hyperprior-q3 \\
        [--parts ct,gray8,...; default all] --out benchmarks/results/rate_point_NAME.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import base_codec as bc  # noqa: E402
from level_bias import level_errors  # noqa: E402

from ttft_archive.adapters.zoo import find_codec, load_codec  # noqa: E402
from ttft_archive.ttft_core import TileCodec  # noqa: E402
from ttft_archive.ttft_core.metrics import metric_at_rate  # noqa: E402

PARTS = {
    "ct": lambda: bc.ct(1),
    "gray8": lambda: bc.gray8(24),
    "landsat": lambda: bc.landsat(4),
    **{name: (lambda name=name: bc.dicom_part(name)) for name in bc.DICOM_IMAGES},
}


def measure(codec: TileCodec, name: str, stored: dict) -> dict:
    """The point's mean rate and metric on one part, and JPEG 2000's stored mean curve there."""
    part = PARTS[name]()
    coded = [part.learned["learned:gray16"](codec, i) for i in range(len(part.stored))]
    bpp = float(np.mean([8 * n / (a.shape[0] * a.shape[1]) for (n, _), a in zip(coded, part.stored)]))
    metric = float(np.mean([part.metrics(a, rec)[part.metric] for a, (_, rec) in zip(part.stored, coded)]))
    j2k = stored[name]["curves"]["jpeg2000"]
    theirs = metric_at_rate([p["bpp"] for p in j2k], [p[part.metric] for p in j2k], bpp)
    return {
        "data": part.description,
        "bpp": round(bpp, 4),
        part.metric: round(metric, 2),
        "jpeg2000_at_that_rate": None if theirs is None else round(theirs, 2),
        "gap_db": None if theirs is None else round(metric - theirs, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("codec")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    stored = json.loads((bc.RESULTS / "base_codec.json").read_text())
    entry = find_codec(args.codec)
    codec = TileCodec(load_codec(entry), args.codec)
    result = {
        "codec": args.codec,
        "sha256": entry.card.get("sha256"),
        "zoo_path": os.environ.get("TTFT_ZOO_PATH", ""),
        "augmentation": entry.card.get("augmentation"),
        "level_errors": level_errors(codec),
    }
    for name in args.parts.split(","):
        result[name] = measure(codec, name, stored)
        print(name, result[name], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
