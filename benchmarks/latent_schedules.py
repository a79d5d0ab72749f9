"""Encode time of the latent refinement schedules compared in docs/evaluation.md: seconds to tune
one 256x256 tile with each preset, on the bundled Kodak crop (rgb q3, pixel task) and a CT crop
(gray16 q3, pixel task), one torch thread, the median of --repeats runs, nothing else measured.

Writes benchmarks/results/latent_schedules.json.

    .venv/bin/python benchmarks/latent_schedules.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from ttft_archive.adapters.eval_sets import open_eval_set  # noqa: E402
from ttft_archive.configs import load_settings  # noqa: E402
from ttft_archive.flows.jobs import codec_setup  # noqa: E402
from ttft_archive.ttft_core import finetune  # noqa: E402
from ttft_archive.ttft_core.tasks import get_task  # noqa: E402

PRESETS = {
    "40 + 40 ste (default)": None,
    "40 + 40 sga": str(ROOT / "benchmarks" / "presets" / "sga40.yaml"),
    "40 + 200 ste": str(ROOT / "benchmarks" / "presets" / "ste200.yaml"),
    "40 + 200 sga (thorough)": "thorough",
}
# (evaluation set, codec): the first image of each, as tasks.py crops it
TILES = (("kodak", "rgb-hyperprior-q3"), ("ct", "gray16-hyperprior-q3"))


def seconds(preset: str | None, data: str, codec_id: str, repeats: int) -> float:
    eval_set = open_eval_set(data, 1, 256)
    tile = eval_set.images[0].x[eval_set.groups[0]]
    settings = load_settings(preset, adapter={"stage1": False, "from_task": None})
    codec, config = codec_setup.prepare(settings, codec_id, tile.shape[0], "pixel")
    task = get_task("pixel")
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        finetune(codec, tile, task.loss, config)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latent_schedules.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, preset in PRESETS.items():
        for data, codec_id in TILES:
            rows.append(
                {
                    "schedule": name,
                    "data": data,
                    "codec": codec_id,
                    "seconds": seconds(preset, data, codec_id, args.repeats),
                }
            )
            print(f"{name} {data} {codec_id}: {rows[-1]['seconds']:.1f} s", flush=True)
    report = {
        "command": "python benchmarks/latent_schedules.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, 1 torch thread",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
