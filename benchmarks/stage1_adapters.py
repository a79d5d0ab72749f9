"""What a stage-1 adapter buys, from real bytes, on the evaluation split (never trained on):
Kodak for adapters of rgb codecs, slices of ct_lung_A0002 for gray16 codecs, whole images, one
tile each. For every adapter in the store: rate and task metric of its codec bare and with the
adapter, and of the family's other rate points, so the adapter's gain can be read at equal rate
(the bare family curve interpolated in log-rate at the adapter's rate, where it spans it).

Writes benchmarks/results/stage1_adapters.json.

    .venv/bin/python benchmarks/stage1_adapters.py [--kodak N] [--ct-every K] [--adapter ID]...
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from ttft_archive.adapters.dicom import read_hu  # noqa: E402
from ttft_archive.adapters.image_files import read_rgb  # noqa: E402
from ttft_archive.adapters.normalise import from_hu  # noqa: E402
from ttft_archive.adapters.zoo import family_rate_points, load_codec, open_codec  # noqa: E402
from ttft_archive.adapters.zoo.adapter_store import list_adapters  # noqa: E402
from ttft_archive.flows.jobs.codec_setup import attach_stored_adapter  # noqa: E402
from ttft_archive.ttft_core import TileCodec  # noqa: E402
from ttft_archive.ttft_core.metrics import gap_at_equal_rate  # noqa: E402
from ttft_archive.ttft_core.stage1 import evaluate  # noqa: E402
from ttft_archive.ttft_core.tasks import get_task  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def evaluation_images(family: str, kodak: int, ct_every: int) -> tuple[list, str]:
    if family == "rgb":
        files = sorted((SHARED / "natural").glob("kodim*.png"))[:kodak]
        return [read_rgb(f) for f in files], f"{len(files)} Kodak images (natural/)"
    files = sorted((SHARED / "medical" / "ct_lung_A0002").glob("*.dcm"))[::ct_every]
    return [from_hu(read_hu(f))[None] for f in files], f"{len(files)} slices of ct_lung_A0002 (every {ct_every})"


def mean_figures(codec: TileCodec, images: list, task) -> dict:
    """Per-image figures (images differ in size, so one at a time), averaged."""
    rows = [evaluate(codec, x[None], task) for x in images]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "crops"}


def measure(entry, card: dict, kodak: int, ct_every: int) -> dict:
    task = get_task(card["task"])
    model, codec_id, codec_card = open_codec(card["codec"])
    family = codec_card["family"]
    images, data = evaluation_images(family, kodak, ct_every)
    curve = []
    for point in family_rate_points(family):
        figures = mean_figures(TileCodec(load_codec(point), point.codec_id), images, task)
        curve.append({"codec": point.codec_id, **figures})
        print(f"{entry.adapter_id}: bare {point.codec_id} {figures}", flush=True)
    attach_stored_adapter(model, codec_id, entry.adapter_id)
    adapted = {
        "codec": codec_id,
        "adapter": entry.adapter_id,
        **mean_figures(TileCodec(model, codec_id, entry.adapter_id), images, task),
    }
    print(f"{entry.adapter_id}: adapted {adapted}", flush=True)
    curve.sort(key=lambda p: p["bpp"])
    bare = next(p for p in curve if p["codec"] == codec_id)
    return {
        "adapter": entry.adapter_id,
        "task": task.name,
        "metric": task.metric_name,
        "higher_is_better": task.higher_is_better,
        "data": data,
        "bare": bare,
        "adapted": adapted,
        "family_curve": curve,
        "rate_change_percent": 100 * (adapted["bpp"] / bare["bpp"] - 1),
        "metric_change": adapted[task.metric_name] - bare[task.metric_name],
        "metric_gain_at_equal_rate": gap_at_equal_rate(curve, adapted, task.metric_name),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kodak", type=int, default=24)
    parser.add_argument("--ct-every", type=int, default=3)
    parser.add_argument("--adapter", action="append", default=None, help="only these adapter ids")
    args = parser.parse_args()
    results = [
        measure(e, card, args.kodak, args.ct_every)
        for e, card in list_adapters()
        if not args.adapter or e.adapter_id in args.adapter
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "stage1_adapters.json"
    fresh = {r["adapter"] for r in results}  # adapters not measured now keep their earlier entries
    kept = [r for r in (json.loads(out.read_text()) if out.exists() else []) if r["adapter"] not in fresh]
    out.write_text(json.dumps(kept + results, indent=2))
    for r in results:
        gain = r["metric_gain_at_equal_rate"]
        print(
            f"{r['adapter']}: rate {r['rate_change_percent']:+.1f}%, {r['metric']} {r['metric_change']:+.3f}, "
            f"at equal rate {'n/a' if gain is None else f'{gain:+.3f}'}"
        )


if __name__ == "__main__":
    main()
