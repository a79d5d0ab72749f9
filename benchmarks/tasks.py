"""Rate-task curves of the method on the evaluation data, from real bytes (flows.evaluation.evaluate for each
task): base codec, stage-1 adapter without TTFT, TTFT from the task's adapter (closed set), TTFT
from another task's adapter (open set), JPEG 2000, HTJ2K and JPEG XL; BD-rate and BD-metric
tables, TTFT seconds per tile, and the batched-TTFT timing of benchmarks/ttft_batch.py when it
has been run.

Writes benchmarks/results/tasks.json (or --out) and <its stem>_<task>_<data>.png beside it.

    .venv/bin/python benchmarks/tasks.py [--count 4] [--size 256] [--ttft-steps 40] [--only edges] [--data ct]
        [--preset configs/presets/ttft80.yaml --out benchmarks/results/tasks_ttft80.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from ttft_archive.flows.evaluation.evaluate import evaluate, plot, with_curves  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# (task, evaluation set, open-set start): each task's open-set run starts from a related task's
# adapter, as a task with no stage-1 adapter of its own would
CASES = [
    ("edges", "landsat", "pixel"),
    ("pixel", "kodak", "edges"),
    ("pixel", "landsat", None),  # what a satellite ingest does by default: TTFT from the zero adapter
    ("pixel", "ct", None),  # what ingest does with CT by default: TTFT from the zero adapter
    ("ct-lung-window", "ct", "ct-mediastinum-window"),
    ("ct-mediastinum-window", "ct", "ct-lung-window"),
    ("ct-bone-mask", "ct", "ct-lung-window"),
    ("ct-lung-mask", "ct", "ct-bone-mask"),
    ("ndvi", "multispectral", None),
    ("water", "multispectral", None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ttft-steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="comma-separated tasks to run")
    parser.add_argument("--data", default=None, help="comma-separated evaluation sets to run (kodak, landsat, ct, ...)")
    parser.add_argument("--preset", default=None, help="settings preset or YAML (a longer TTFT schedule, say)")
    parser.add_argument("--out", default=str(RESULTS / "tasks.json"))
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated variants to measure again; the others' curves are kept from --out",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    results = previous.get("results", {})
    chosen = set(args.only.split(",")) if args.only else None
    sets = set(args.data.split(",")) if args.data else None
    for task, data, open_from in CASES:
        if (chosen and task not in chosen) or (sets and data not in sets):
            continue
        started = time.perf_counter()
        result = evaluate(
            task,
            data,
            count=args.count,
            size=args.size,
            ttft_steps=args.ttft_steps,
            open_from=open_from,
            preset=args.preset,
            log=lambda line: print(line, flush=True),
            **({"variants": tuple(args.variants.split(","))} if args.variants else {}),
        )
        result["seconds"] = time.perf_counter() - started
        result["run_by"] = "python benchmarks/tasks.py " + " ".join(sys.argv[1:])  # the file may mix runs
        earlier = results.get(f"{task}/{data}")
        if args.variants and earlier:
            result = join_rerun(earlier, result)
        results[f"{task}/{data}"] = result
        plot(result, out.parent / f"{out.stem}_{task}_{data}.png")
        for key in ("table", "table_payload"):
            for row in result[key]:
                print(
                    f"  {task}/{data} {row['curve']} vs {row['against']} ({key}): per-image BD-rate mean "
                    f"{row.get('per_image_bd_rate_mean')}, mean curves' BD-rate {row['bd_rate_percent']} "
                    f"BD-metric {row['bd_metric']}",
                    flush=True,
                )
        write(out, results, args.threads)  # after each task: a long run stopped early keeps what it measured


def join_rerun(earlier: dict, rerun: dict) -> dict:
    """The variants measured again take the place of their earlier curves; the rest stay, and
    the tables are drawn again over all of them."""
    curves = {**earlier["curves"], **rerun["curves"]}
    joined = with_curves(earlier, curves)
    joined["run_by"] = f"{earlier.get('run_by')}; then {', '.join(rerun['curves'])} by {rerun['run_by']}"
    return joined


def write(out: Path, results: dict, threads: int) -> None:
    batch = RESULTS / "ttft_batch.json"
    report = {
        "command": "python benchmarks/tasks.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {threads} torch threads, load {os.getloadavg()[0]:.1f}",
        "results": results,
        "batched_ttft": json.loads(batch.read_text()) if batch.exists() else None,
    }
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
