"""The `ttft` command line. Every user error prints one line and exits non-zero."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from pathlib import Path


def _quiet_third_party() -> None:
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.functional")


def cmd_codecs(args) -> int:
    from adapters.zoo import list_codecs
    from ttft_core.backbones import PRESETS, build, preset, registered

    sizes = []
    for name, spec in PRESETS.items():
        model = build(preset(name))
        sizes.append({
            "name": name, "backbone": spec["backbone"],
            "encoder_parameters": sum(p.numel() for p in model.g_a.parameters()),
            "decoder_parameters": sum(p.numel() for p in model.g_s.parameters()),
            "config": model.config.to_dict(),
        })  # fmt: skip
    shipped = [{"id": e.codec_id, "weights": str(e.weights), **e.card} for e in list_codecs()]
    if args.json:
        print(json.dumps({"backbones": registered(), "sizes": sizes, "codecs": shipped}, indent=2))
        return 0
    print("backbones: " + ", ".join(registered()))
    print(f"{'size':<18}{'backbone':<12}{'N':>5}{'M':>5}{'encoder params':>16}{'decoder params':>16}")
    for s in sizes:
        c = s["config"]
        print(f"{s['name']:<18}{s['backbone']:<12}{c['N']:>5}{c['M']:>5}{s['encoder_parameters']:>16,}{s['decoder_parameters']:>16,}")
    print(f"shipped codecs: {len(shipped) or 'none yet'}")
    for c in shipped:
        print(f"  {c['id']:<28} {c.get('family', ''):<8} lambda {c.get('lambda', '?')}  steps {c.get('steps', '?')}")
    return 0


def cmd_tasks(args) -> int:
    from ttft_core.tasks import describe_all

    tasks = describe_all()
    if args.json:
        print(json.dumps(tasks, indent=2))
        return 0
    for t in tasks:
        better = "higher" if t["higher_is_better"] else "lower"
        print(f"{t['name']:<24}{t['description']}  [{t['metric']}, {better} is better]")
    return 0


def _report_line(r: dict) -> str:
    how = r["codec"] + (f" + TTFT {r['ttft_steps']} steps" if r["ttft_steps"] else "")
    task = "" if r["task"] == "pixel" else f"{r['task']} {r['task_metric']} {r['task_value']:.4g}, "
    note = "" if r["trained"] else "  (untrained weights: PSNR is meaningless)"
    return (
        f"{Path(r['image']).name} {r['height']}x{r['width']}, {how}: {r['bytes']} bytes, "
        f"{r['bpp']:.3f} bpp, PSNR {r['psnr_db']:.2f} dB, {task}"
        f"encode {r['encode_seconds']:.2f} s, decode {r['decode_seconds']:.2f} s{note}"
    )


def cmd_roundtrip(args) -> int:
    from flows.roundtrip import roundtrip

    steps = [0, args.ttft_steps] if args.command == "demo" and args.ttft_steps else [args.ttft_steps]
    reports = [
        roundtrip(args.image, codec=args.codec, ttft_steps=n, preset=args.preset, quality=args.quality,
                  task=args.task)
        for n in steps
    ]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    else:
        for r in reports:
            print(_report_line(r))
    return 0


def cmd_train_base(args) -> int:
    from flows.train_base import TrainBaseJob, run

    job = TrainBaseJob(
        codec_id=args.codec_id, data=args.data, run_dir=args.run_dir or f"runs/{args.codec_id}",
        size=args.size, modality=args.modality, lmbda=args.lmbda, steps=args.steps, batch=args.batch, crop=args.crop,
        lr=args.lr, seed=args.seed, export_to=args.export_to,
        command="ttft " + shlex.join(sys.argv[1:]),
        extra_card={"family": args.family} if args.family else {},
    )  # fmt: skip
    path = run(job, log=lambda line: print(line, flush=True))
    print(f"done: {path}" if path else "done (no export requested)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttft", description="Task-aware learned-codec archive")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("codecs", help="list backbones, their sizes and the shipped codecs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_codecs)

    for name, helptext in (("roundtrip", "compress and decompress one image, print bytes, bpp and PSNR"),
                           ("demo", "the main job on the bundled sample (for now: a round trip without and with TTFT)")):  # fmt: skip
        p = sub.add_parser(name, help=helptext)
        p.add_argument("image", nargs="?", default=None, help="an 8-bit image (default: the bundled sample)")
        p.add_argument("--codec", default=None, help="a shipped codec id or a backbone size (default: best shipped)")
        p.add_argument("--ttft-steps", type=int, default=0 if name == "roundtrip" else 10)
        p.add_argument("--preset", default=None, help="a settings preset (satellite, ct) or a YAML file")
        p.add_argument("--quality", type=int, default=None, help="the family's rate point, 1 = lowest rate")
        p.add_argument("--task", default="pixel", help="what TTFT optimises and the report measures (ttft tasks)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_roundtrip)

    p = sub.add_parser("tasks", help="list the built-in tasks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("train-base", help="train a base codec (resumable; run it in the background)")
    p.add_argument("codec_id")
    p.add_argument("data", nargs="+", help="folders of training images")
    p.add_argument("--size", default="hyperprior-small")
    p.add_argument("--family", default="rgb")
    p.add_argument("--modality", default="rgb8", help="rgb8 (PNG/JPEG folders) or ct (DICOM folders)")
    p.add_argument("--lmbda", type=float, default=0.0067)
    p.add_argument("--steps", type=int, default=60_000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default="")
    p.add_argument("--export-to", default="", help="folder for the finished safetensors + card")
    p.set_defaults(func=cmd_train_base)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party()
    from ttft_core.errors import TTFTError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TTFTError as exc:
        print(f"ttft: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ttft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
