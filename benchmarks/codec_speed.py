"""Codec speed and memory on this machine: for each backbone size, compress and decompress
seconds and peak memory for a 256x256 tile (a real Kodak crop), and the seconds for 40 TTFT steps
alone (the paper's stage 2) and followed by 40 steps refining the latents (the default).

Each size runs in its own process so that peak RSS belongs to it alone. Writes
benchmarks/results/codec_speed.json and codec_speed.png.

    .venv/bin/python benchmarks/codec_speed.py [--sizes hyperprior-small tic-small] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def measure(size: str, repeats: int, ttft_steps: int) -> dict:
    """Runs in the child process."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    import psutil
    import torch

    from ttft_archive.adapters.image_files import read_rgb
    from ttft_archive.adapters.zoo import open_codec
    from ttft_archive.ttft_core import TileCodec, TTFTConfig, attach_adapter, finetune

    tile = read_rgb(ROOT / "adapters" / "samples" / "kodim23_crop256.png")
    model, codec_id, _ = open_codec(size, channels=3)
    attach_adapter(model)
    codec = TileCodec(model, codec_id, adapter_id="zero")
    codec.decompress(codec.compress(tile))  # warm-up: allocator, kernels
    rss_ready = psutil.Process().memory_info().rss
    enc, dec = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        data = codec.compress(tile)
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        codec.decompress(data)
        dec.append(time.perf_counter() - t)
    peak_coding = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = finetune(codec, tile, config=TTFTConfig(steps=ttft_steps))
    refined = finetune(codec, tile, config=TTFTConfig(steps=ttft_steps, latent_steps=ttft_steps))
    peak_all = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "size": size,
        "config": model.config.to_dict(),
        "encoder_parameters": sum(p.numel() for n, p in model.g_a.named_parameters() if ".lora_" not in n),
        "decoder_parameters": sum(p.numel() for n, p in model.g_s.named_parameters() if ".lora_" not in n),
        "adapter_parameters": sum(v.numel() for v in codec.stage1_state.values()),
        "decoder_singular_values": codec.reference_s.numel(),
        "bytes_untrained": len(data),
        "compress_seconds_median": statistics.median(enc),
        "decompress_seconds_median": statistics.median(dec),
        "compress_seconds_all": enc,
        "decompress_seconds_all": dec,
        "rss_ready_mib": rss_ready / 2**20,
        "peak_rss_coding_mib": peak_coding / 2**20,
        "peak_rss_with_ttft_mib": peak_all / 2**20,
        "ttft_steps": ttft_steps,
        "ttft_seconds": result.seconds,
        "ttft_seconds_per_step": result.seconds / ttft_steps,
        "ttft_with_latent_steps_seconds": refined.seconds,
        "threads": torch.get_num_threads(),
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["size"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x = range(len(rows))
    axes[0].bar([i - 0.2 for i in x], [r["compress_seconds_median"] for r in rows], 0.4, label="compress")
    axes[0].bar([i + 0.2 for i in x], [r["decompress_seconds_median"] for r in rows], 0.4, label="decompress")
    axes[0].set_ylabel("seconds per 256x256 tile")
    axes[0].legend()
    steps = rows[0]["ttft_steps"]
    axes[1].bar([i - 0.2 for i in x], [r["ttft_seconds"] for r in rows], 0.4, color="tab:green", label=f"{steps} steps")
    axes[1].bar(
        [i + 0.2 for i in x],
        [r.get("ttft_with_latent_steps_seconds", 0) for r in rows],
        0.4,
        color="tab:olive",
        label=f"+ {steps} latent steps",
    )
    axes[1].axhline(10, color="gray", linestyle="--", label="10 s target")
    axes[1].set_ylabel("TTFT seconds per tile")
    axes[1].legend()
    for ax in axes:
        ax.set_xticks(list(x), names, rotation=15)
    fig.suptitle(f"CPU, {rows[0]['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["hyperprior-small", "hyperprior", "tic-small", "tic"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ttft-steps", type=int, default=40)
    parser.add_argument("--out", default=str(RESULTS / "codec_speed.json"))
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.repeats, args.ttft_steps)))
        return
    rows = []
    for size in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            size,
            "--repeats",
            str(args.repeats),
            "--ttft-steps",
            str(args.ttft_steps),
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
        row = json.loads(run.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{size:<18} compress {row['compress_seconds_median']:.3f} s  decompress {row['decompress_seconds_median']:.3f} s  "
            f"peak RSS {row['peak_rss_coding_mib']:.0f} MiB  TTFT {row['ttft_steps']} steps {row['ttft_seconds']:.1f} s, "
            f"+ as many latent steps {row['ttft_with_latent_steps_seconds']:.1f} s",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tile": "adapters/samples/kodim23_crop256.png (256x256 RGB)",
        "weights": "untrained (seeded); speed does not depend on training",
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
