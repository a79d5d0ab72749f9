"""Test-time fine-tuning on the CPU and on a GPU: tiles per second, and the same quality.

256x256 tiles (crops of the Kodak images when the shared data set is beside the checkout, else
the bundled sample crop in its eight flips and turns, repeated), task pixel, the codec prepared as
an ingest prepares it, the settings' schedule (40 adapter + 40 latent steps unless --steps says
otherwise), seeded. The CPU row tunes the first --cpu-tiles tiles one batch of the settings'
ttft.batch_pixels at a time, as a CPU ingest does; where torch sees a GPU, one row per batch size
tunes all --tiles tiles on it. Each tile is then coded on the CPU (as always) and decoded: its
bytes, PSNR and best TTFT cost are recorded, so that the rows are seen to code alike (they are not
byte-identical: float arithmetic differs between devices). Every GPU row has a ``speedup``: its
tiles per second over the CPU row's. Tuning time only; coding time is recorded apart.

    .venv/bin/python benchmarks/ttft_device.py [--tiles 64] [--cpu-tiles 4] [--cpu-threads 16]
    .venv/bin/python benchmarks/ttft_device.py --tiles 2 --cpu-tiles 2 --steps 2 --out /tmp/ttft_device.json

Writes benchmarks/results/ttft_device.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

from ttft_archive.adapters.image_files import read_rgb
from ttft_archive.configs import load_settings
from ttft_archive.flows.jobs import codec_setup
from ttft_archive.flows.jobs.tiles import tiles_per_batch
from ttft_archive.ttft_core import TileCodec, TTFTConfig, compress_tuned, finetune_batch
from ttft_archive.ttft_core.metrics import psnr
from ttft_archive.ttft_core.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATA = Path(os.environ.get("TTFT_SHARED_DATA", ROOT.parent / "shared" / "data"))
SAMPLE = ROOT / "adapters" / "samples" / "kodim23_crop256.png"
TILE = 256
CODEC = "rgb-hyperprior-q3"


def tiles(n: int) -> tuple[list[torch.Tensor], str]:
    """n tiles of 256x256 and where they come from."""
    kodak = sorted((DATA / "natural").glob("kodim*.png"))
    if kodak:
        crops = []
        for path in kodak:
            image = read_rgb(path)
            _, h, w = image.shape
            crops += [
                image[:, r : r + TILE, c : c + TILE].contiguous()
                for r in range(0, h - TILE + 1, TILE)
                for c in range(0, w - TILE + 1, TILE)
            ]
            if len(crops) >= n:
                return crops[:n], f"{DATA / 'natural'}: kodim*.png cut into {TILE}x{TILE} crops, row by row"
        return [crops[i % len(crops)] for i in range(n)], f"{DATA / 'natural'}: every {TILE}x{TILE} crop, repeated"
    sample = read_rgb(SAMPLE)
    turns = [sample, sample.flip(-1), sample.flip(-2), sample.flip(-1, -2)]
    turns += [t.transpose(-1, -2) for t in turns]
    return [turns[i % 8].contiguous() for i in range(n)], f"{SAMPLE.name} in its 8 flips and turns, repeated"


def prepared(device: str, steps: int | None) -> tuple[TileCodec, TTFTConfig]:
    """The codec and TTFT config an ingest of task pixel would use on ``device``, seeded."""
    ttft = {"device": device} | ({"steps": steps, "latent_steps": steps} if steps is not None else {})
    settings = load_settings(ttft=ttft)
    codec, config = codec_setup.prepare(settings, CODEC, 3, task="pixel")
    return codec, TTFTConfig(**{**config.__dict__, "seed": 0})


def run(codec: TileCodec, config: TTFTConfig, batch: list[torch.Tensor], size: int) -> dict:
    """Tune ``batch`` in batches of ``size`` (timed, after a one-step warm-up), then code each tile
    on the CPU and decode it."""
    task = get_task("pixel")
    warm_up = TTFTConfig(**{**config.__dict__, "steps": 1, "latent_steps": 1})
    finetune_batch(codec, batch[:size], task.loss, warm_up)  # kernels for this shape, the model's copy
    cuda = torch.device(config.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    results = [
        r for i in range(0, len(batch), size) for r in finetune_batch(codec, batch[i : i + size], task.loss, config)
    ]
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    started = time.perf_counter()
    coded = [compress_tuned(codec, tile, result) for tile, result in zip(batch, results)]
    coding = time.perf_counter() - started
    return {
        "batch": size,
        "tiles": len(batch),
        "tuning_s": wall,
        "tiles_per_s": len(batch) / wall,
        "coding_s": coding,
        "bytes": [len(data) for data in coded],
        "psnr_db": [psnr(codec.decompress(data), tile) for data, tile in zip(coded, batch)],
        "best_loss": [r.best_loss for r in results],
    }


def against(row: dict, cpu: dict) -> dict:
    """How a GPU row's tiles code beside the CPU row's (the tiles both tuned)."""
    n = cpu["tiles"]
    return {
        "speedup": row["tiles_per_s"] / cpu["tiles_per_s"],
        "tiles_compared": n,
        "bytes_ratio_mean": statistics.mean(a / b for a, b in zip(row["bytes"][:n], cpu["bytes"])),
        "psnr_db_difference_mean": statistics.mean(a - b for a, b in zip(row["psnr_db"][:n], cpu["psnr_db"])),
        "best_loss_relative_difference_max": max(
            abs(a - b) / abs(b) for a, b in zip(row["best_loss"][:n], cpu["best_loss"])
        ),
        "identical_bytes": sum(a == b for a, b in zip(row["bytes"][:n], cpu["bytes"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=64, help="tiles every GPU row tunes")
    parser.add_argument("--cpu-tiles", type=int, default=4, help="the first of them that the CPU row tunes")
    parser.add_argument("--cpu-threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="adapter steps, and as many latent steps (default: the settings', 40 and 40)",
    )
    parser.add_argument("--batches", default="1,8,32,64", help="GPU batch sizes, at most --tiles")
    parser.add_argument("--out", default=str(RESULTS / "ttft_device.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.cpu_threads)
    all_tiles, source = tiles(args.tiles)
    cpu_tiles = all_tiles[: min(args.cpu_tiles, args.tiles)]
    codec, config = prepared("cpu", args.steps)
    cpu_batch = tiles_per_batch(load_settings().ttft.batch_pixels, TILE)
    print(f"cpu: {len(cpu_tiles)} tiles, {args.cpu_threads} threads, batch {cpu_batch}", flush=True)
    cpu = {
        "device": "cpu",
        "name": f"{platform.machine()} CPU ({platform.processor() or 'unknown'})",
        "threads": torch.get_num_threads(),
        **run(codec, config, cpu_tiles, cpu_batch),
    }
    print(
        f"  {cpu['tiles_per_s']:.3f} tiles/s, {statistics.mean(cpu['bytes']):.0f} bytes, "
        f"{statistics.mean(cpu['psnr_db']):.2f} dB",
        flush=True,
    )
    rows = [cpu]
    if torch.cuda.is_available():
        # TF32 (cuDNN's default for convolutions on recent GPUs) is left as torch sets it: an ingest runs so
        tf32 = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
        codec, config = prepared("cuda", args.steps)
        for size in sorted({min(int(b), args.tiles) for b in args.batches.split(",")}):
            print(f"cuda: {args.tiles} tiles, batch {size}", flush=True)
            row = {"device": "cuda", "name": torch.cuda.get_device_name(), **run(codec, config, all_tiles, size)}
            row |= against(row, cpu)
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
            rows.append(row)
            print(
                f"  {row['tiles_per_s']:.3f} tiles/s, speedup {row['speedup']:.1f}x, bytes x{row['bytes_ratio_mean']:.4f}, "
                f"PSNR {row['psnr_db_difference_mean']:+.3f} dB against the CPU",
                flush=True,
            )
    else:
        tf32 = None
        print("no GPU: the CPU row alone", flush=True)
    result = {
        "codec": codec.codec_id,
        "adapter": codec.adapter_id,
        "task": "pixel",
        "tile": TILE,
        "tiles": source,
        "steps": config.steps,
        "latent_steps": config.latent_steps,
        "seed": config.seed,
        "lmbda": config.lmbda,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32": tf32,
        "cpus": os.cpu_count(),
        "rows": rows,
        "note": "tuning time only (coding_s apart); the CPU row tunes the first tiles, the GPU rows all of them; "
        "speedup: a GPU row's tiles/s over the CPU row's",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
