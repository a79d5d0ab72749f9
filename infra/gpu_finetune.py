"""Fine-tuning shipped codecs on a GPU machine, side by side, within one wall-clock budget.

Three steps, two machines:
  pack    (here)        .gpu/: the codecs' weights in float16 (only 64 MiB of tree travel to the
                        device; a new rate point, NEW=FROM@LAMBDA, travels as FROM's weights under
                        a card with its own id and lambda), their cards, compressai's Python
                        files, and as many training images as fit beside them, listed in
                        .gpu/data.txt: 8-bit photographs as their own
                        files, CT slices and raster bands (--modality gray16 or ct) read and mapped
                        here as training maps them, then written as 16-bit PNGs
  train   (the device)  one codec per process (infra/gpu_finetune.sh starts them): batches of random
                        crops, rate-distortion plus aux loss through ttft_core.training, checkpoints
                        written atomically into the output folder every minute
  export  (here)        a returned state dict -> safetensors + card in a staging folder, the card
                        saying which files, steps, budget and device produced it

The device has torch but none of this project's file-reading dependencies (pydicom, rasterio), and
Python 3.12 where compressai's wheel here is built for 3.11: `train` imports only ttft_core and
adapters.crops / adapters.image_files, and compressai's two C++ modules and google_crc32c, which
training never calls, are replaced by stubs that fail if called."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PACK = ROOT / ".gpu"
# The entropy coder's tables: rebuilt by update() at export, empty while training.
CODER_TABLES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
STUB_CXX = '''"""Stand-in for compressai's C++ module on a machine its wheel does not fit; training never calls it."""


def pmf_to_quantized_cdf(*args, **kwargs):
    raise RuntimeError("compressai._CXX is a stub here: build entropy tables on the machine that exports")
'''
STUB_ANS = '''"""Stand-in for compressai's rANS module on a machine its wheel does not fit; training never codes."""


class _Stub:
    """Constructed by every entropy model; fails only when asked to code."""

    def __getattr__(self, name):
        raise RuntimeError("compressai.ans is a stub here: entropy coding happens on the machine that exports")


RansEncoder = RansDecoder = BufferedRansEncoder = _Stub
'''
STUB_CRC32C = '''"""Stand-in on the GPU machine: ttft_core imports it for tile bitstreams, which training never writes."""


def value(data):
    raise RuntimeError("google_crc32c is a stub here")
'''


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.endswith(CODER_TABLES)}


def _load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    # nn.Module's own loader: CompressAI's would demand the coder tables that were left out
    missing, unexpected = torch.nn.Module.load_state_dict(model, state, strict=False)
    missing = [k for k in missing if not k.endswith(CODER_TABLES)]
    if missing or unexpected:
        raise RuntimeError(f"state dict does not fit the codec: missing {missing}, unexpected {unexpected}")


# ---------------------------------------------------------------- pack (here)
def codec_spec(text: str) -> tuple[str, str, float | None]:
    """(codec id, the shipped codec it starts from, its lambda or None for the start's) of a pack
    argument: a shipped id, or NEW=FROM@LAMBDA for a new rate point of FROM's family, such as
    gray16-hyperprior-q7=gray16-hyperprior-q6@10.0."""
    if "=" not in text:
        return text, text, None
    new, _, start = text.partition("=")
    start, _, lmbda = start.partition("@")
    try:
        value = float(lmbda)
    except ValueError:
        raise SystemExit(f"{text}: a new rate point is NEW=FROM@LAMBDA, LAMBDA a number") from None
    if not new or not start or value <= 0:
        raise SystemExit(f"{text}: a new rate point is NEW=FROM@LAMBDA, with a positive LAMBDA")
    return new, start, value


def grown_checkerboard(model: torch.nn.Module) -> torch.nn.Module:
    """The checkerboard codec of a hyperprior's size holding its weights, the context at its start
    (coding as the hyperprior alone)."""
    from dataclasses import replace

    from ttft_archive.ttft_core import build
    from ttft_archive.ttft_core.backbones import grow_from_hyperprior

    if model.config.backbone != "hyperprior":
        raise SystemExit(f"--checkerboard grows hyperprior codecs, not a {model.config.backbone}")
    grown = build(replace(model.config, backbone="checkerboard"))
    grow_from_hyperprior(grown, model)
    return grown


def widened(model: torch.nn.Module) -> torch.nn.Module:
    """The `hyperprior` codec (N 128, M 192) widened from a narrower hyperprior, coding as it does."""
    from ttft_archive.ttft_core import TTFTError, build, preset
    from ttft_archive.ttft_core.backbones import widen

    wide = build(preset("hyperprior", model.config.channels))
    try:
        widen(wide, model)
    except TTFTError as exc:
        raise SystemExit(f"--widen: {exc}") from None
    return wide


def _check_widens(codec_id: str) -> None:
    """Refuse, before anything is packed, a start that the `hyperprior` preset does not widen."""
    from ttft_archive.adapters.zoo import find_codec
    from ttft_archive.ttft_core import preset
    from ttft_archive.ttft_core.backbones import BackboneConfig
    from ttft_archive.ttft_core.backbones.widen import widens

    start = BackboneConfig.from_dict(find_codec(codec_id).card["backbone"])
    if not widens(start, preset("hyperprior", start.channels)):
        raise SystemExit(f"--widen {codec_id}: a {start.backbone} codec of N {start.N}, M {start.M} does not widen")


def _pack_codecs(
    root: Path, specs: list[tuple[str, str, float | None]], checkerboard: bool = False, wide: bool = False
) -> None:
    """Each codec's weights and card; a new rate point travels as its start's weights under a card
    of its own (its id and lambda, the start's card beside them as ``packed_from_card``), and so
    does a hyperprior grown into a checkerboard codec (id ``-hyperprior-`` -> ``-checkerboard-``)
    or widened (``wide``: under its own id, NEW=FROM@LAMBDA)."""
    from ttft_archive.adapters.zoo import find_codec, load_codec

    (root / "models").mkdir(parents=True)
    for codec_id, start, lmbda in specs:
        entry = find_codec(start)
        model = load_codec(entry)
        card = dict(entry.card)
        if lmbda is not None:
            card |= {"id": codec_id, "lambda": lmbda, "packed_from_card": entry.card}
        if checkerboard:
            torch.manual_seed(0)
            model = grown_checkerboard(model)
            codec_id = codec_id.replace("-hyperprior-", "-checkerboard-")
            card |= {"id": codec_id, "backbone": model.config.to_dict(), "packed_from_card": entry.card}
        if wide:
            torch.manual_seed(0)
            model = widened(model)
            card |= {"id": codec_id, "backbone": model.config.to_dict(), "packed_from_card": entry.card}
        state = _trainable_state(model)
        half = {k: v.half() if v.is_floating_point() and v.numel() > 4096 else v for k, v in state.items()}
        save_file(half, root / "models" / f"{codec_id}.safetensors")
        (root / "models" / f"{codec_id}.json").write_text(json.dumps(card))


def _pack_site(root: Path) -> None:
    import compressai
    import pytorch_msssim

    site = root / "site"
    shutil.copytree(
        Path(compressai.__file__).parent, site / "compressai", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    (site / "compressai" / "_CXX.py").write_text(STUB_CXX)
    (site / "compressai" / "ans.py").write_text(STUB_ANS)
    (site / "google_crc32c").mkdir()
    (site / "google_crc32c" / "__init__.py").write_text(STUB_CRC32C)
    shutil.copytree(
        Path(pytorch_msssim.__file__).parent, site / "pytorch_msssim", ignore=shutil.ignore_patterns("__pycache__")
    )


def _pack_image_files(root: Path, folders: list[str], budget: int) -> list[str]:
    """8-bit photographs travel as the files they are (JPEG is far smaller than any lossless copy)."""
    taken = []
    for folder in folders:
        for f in sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
            if f.stat().st_size > budget:
                continue
            budget -= f.stat().st_size
            shutil.copyfile(f, root / "data" / f"{len(taken):04d}{f.suffix.lower()}")
            taken.append(str(f))
    return taken


def _pack_16bit_images(root: Path, modality: str, folders: list[str], budget: int) -> list[str]:
    """CT slices and raster bands are read here (the device has no pydicom or rasterio), mapped as
    training maps them, and travel as single-channel 16-bit PNGs."""
    import numpy as np
    from PIL import Image

    from ttft_archive.adapters.training_sets import open_training_set

    data = open_training_set(modality, folders)
    taken = []
    for f in data.files:
        target = root / "data" / f"{len(taken):04d}.png"
        Image.fromarray(data.read(f)[0].numpy().astype(np.uint16)).save(target, optimize=True)
        if target.stat().st_size > budget:
            target.unlink()
            continue
        budget -= target.stat().st_size
        taken.append(str(f))
    spec = {"scale": data.scale, "by_area": data.by_area, "channels": data.channels}
    (root / "data_spec.json").write_text(json.dumps(spec))
    return taken


def pack(args: argparse.Namespace) -> None:
    root = Path(args.pack)
    specs = [codec_spec(spec) for spec in args.ids]  # refused before anything is written
    if args.widen and args.checkerboard:
        raise SystemExit("--widen and --checkerboard: one at a time (widen, train, then grow)")
    for codec_id, start, _ in specs if args.widen else []:
        if codec_id == start:
            raise SystemExit(f"--widen {start}: name the wide codec, NEW={start}@LAMBDA")
        _check_widens(start)
    if root.exists():
        if any(root.iterdir()) and not (root / "data.txt").is_file():
            raise SystemExit(f"{root}: exists and holds no earlier pack (no data.txt); not replacing it")
        shutil.rmtree(root)
    _pack_codecs(root, specs, args.checkerboard, args.widen)
    _pack_site(root)
    (root / "data").mkdir()
    budget = int(args.budget_mb * 1e6) - sum(f.stat().st_size for f in (root / "models").iterdir())
    if args.modality == "rgb8":
        taken = _pack_image_files(root, args.data, budget)
    else:
        taken = _pack_16bit_images(root, args.modality, args.data, budget)
    (root / "data.txt").write_text("\n".join(taken) + "\n")
    used = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"packed {len(args.ids)} codecs and {len(taken)} training images into {root} ({used / 1e6:.1f} MB)")


# ---------------------------------------------------------------- train (the device)
def _read_png16(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im).astype(np.int32))[None]


def train(args: argparse.Namespace) -> None:
    from ttft_archive.adapters.crops import CropSampler
    from ttft_archive.adapters.image_files import read_rgb_u8
    from ttft_archive.ttft_core.backbones import BackboneConfig, build
    from ttft_archive.ttft_core.training import BaseTrainConfig, BaseTrainer, step_decay, train_context_only

    if not 0 <= args.levels <= 1:
        raise SystemExit(f"--levels {args.levels}: a share of the crops, 0 to 1")
    root = Path(args.pack)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    card = json.loads((root / "models" / f"{args.codec_id}.json").read_text())
    model = build(BackboneConfig.from_dict(card["backbone"]))
    _load_trainable(
        model,
        {
            k: v.float() if v.is_floating_point() else v
            for k, v in load_file(root / "models" / f"{args.codec_id}.safetensors").items()
        },
    )
    model.to(device)
    files = sorted((root / "data").iterdir())
    spec_path = root / "data_spec.json"
    if spec_path.exists():
        spec = json.loads(spec_path.read_text())
        sampler = CropSampler(
            files, _read_png16, args.crop, args.seed, scale=spec["scale"], by_area=spec["by_area"], levels=args.levels
        )
    elif args.levels:
        raise SystemExit("--levels is for one-channel packs (gray16, ct)")
    else:
        sampler = CropSampler(files, read_rgb_u8, args.crop, args.seed)
    torch.manual_seed(args.seed)
    if args.train == "context":
        train_context_only(model)
    config = BaseTrainConfig(lmbda=card["lambda"], lr=args.lr, total_steps=1)
    trainer = BaseTrainer(model, config)
    out = Path(args.out)
    log_path = out / "train_log.jsonl"
    started = time.perf_counter()
    # The learning rate decays at fractions of the wall-clock budget, not of a step count: how many
    # steps fit depends on how many codecs share the GPU. The card records where the decays fell.
    fraction = 0.0
    trainer.learning_rate = lambda: step_decay(args.lr, fraction, 1.0, config.decay_at)
    window: list[dict] = []
    last_save = started
    decays: list[int] = []
    data_sha256 = hashlib.sha256((root / "data.txt").read_bytes()).hexdigest()

    def log(record: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps({"id": args.codec_id, **record}) + "\n")

    def save(final: bool) -> None:
        state = _trainable_state(model)
        if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
            raise RuntimeError(f"{args.codec_id}: weights went non-finite at step {trainer.step}")
        tmp = out / f".{args.codec_id}.tmp"
        meta = {
            "steps": str(trainer.step),
            "wall_seconds": f"{time.perf_counter() - started:.1f}",
            "decay_steps": json.dumps(decays),
            "final": str(final),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "batch": str(args.batch),
            "crop": str(args.crop),
            "lr": str(args.lr),
            "budget_s": str(args.budget_s),
            "seed": str(args.seed),
            "levels": str(args.levels),
            "train": args.train,
            "data_sha256": data_sha256,
        }
        save_file(state, tmp, metadata=meta)
        os.replace(tmp, out / f"{args.codec_id}.safetensors")

    log({"event": "start", "images": len(sampler.images), "lambda": card["lambda"]})
    while fraction < 1.0:
        lr_before = trainer.learning_rate()
        window.append(trainer.train_step(sampler.batch(args.batch).to(device, non_blocking=True)))
        fraction = (time.perf_counter() - started) / args.budget_s
        if trainer.learning_rate() < lr_before:
            decays.append(trainer.step)
        if trainer.step % args.log_every == 0:
            mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            log({"step": trainer.step, "lr": lr_before, "seconds": round(time.perf_counter() - started, 1), **mean})
            window = []
        if time.perf_counter() - last_save > args.save_every_s:
            save(final=False)
            last_save = time.perf_counter()
    save(final=True)
    log(
        {
            "event": "done",
            "steps": trainer.step,
            "decay_steps": decays,
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    print(f"{args.codec_id}: {trainer.step} steps in {time.perf_counter() - started:.0f} s, decays at {decays}")


# ---------------------------------------------------------------- export (here)
def export(args: argparse.Namespace) -> None:
    from safetensors import safe_open

    from ttft_archive.adapters.crops import levels_note
    from ttft_archive.adapters.zoo import save_codec
    from ttft_archive.flows.training.base_codec import CONTEXT_ONLY_NOTE
    from ttft_archive.ttft_core import build
    from ttft_archive.ttft_core.backbones import BackboneConfig

    root = Path(args.pack)
    packed = json.loads((root / "models" / f"{args.codec_id}.json").read_text())  # what the run trained
    start = packed.get("packed_from_card", packed)
    with safe_open(args.state, "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("final") != "True":
        raise SystemExit(f"{args.state}: not a finished run (step {meta.get('steps')})")
    model = build(BackboneConfig.from_dict(packed["backbone"]))
    _load_trainable(model, state)
    listing = (root / "data.txt").read_bytes()
    listing_sha256 = hashlib.sha256(listing).hexdigest()
    if meta.get("data_sha256", listing_sha256) != listing_sha256:
        raise SystemExit(f"{root / 'data.txt'}: not the listing {args.state} trained on (packed again since?)")
    files = listing.decode().split()
    card = {
        "family": packed["family"],
        "lambda": packed["lambda"],
        "steps": int(meta["steps"]),
        "batch": int(meta["batch"]),
        "crop": int(meta["crop"]),
        "wall_seconds": float(meta["wall_seconds"]),
        "machine": f"{meta['device']}{'' if meta['device'] == 'cpu' else ' (GPU)'}, shared by {args.shared_by} "
        "codecs training side by side",
        "normalisation": packed["normalisation"],
        **({"augmentation": levels_note(float(meta["levels"]))} if float(meta.get("levels", 0)) else {}),
        **({"trained": CONTEXT_ONLY_NOTE} if meta.get("train") == "context" else {}),
        "init_from": start["id"],
        "init_from_note": "the weights of init_from_card, rounded to float16 for the transfer to the GPU machine",
        "init_from_card": start,
        "lr_schedule": f"lr {meta['lr']}, tenfold decays at 75% and 92% of a {meta['budget_s']} s budget "
        f"(at steps {', '.join(map(str, json.loads(meta['decay_steps'])))})",
        "train_files": files,
        "command": args.command,
    }
    print(save_codec(args.to, args.codec_id, model, card))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", default=str(DEFAULT_PACK), help="the folder that travels (default .gpu)")
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack")
    p.add_argument("ids", nargs="+", help="shipped codec ids, or NEW=FROM@LAMBDA: a new rate point started from FROM")
    p.add_argument(
        "--data", nargs="+", required=True, help="training folders, taken in this order until the budget is spent"
    )
    p.add_argument("--modality", default="rgb8", choices=["rgb8", "gray16", "ct"], help="as train-base --modality")
    p.add_argument("--budget-mb", type=float, default=62.0, help="the weights and the images together")
    p.add_argument(
        "--checkerboard",
        action="store_true",
        help="pack each hyperprior as the checkerboard codec grown from it (id -hyperprior- -> -checkerboard-)",
    )
    p.add_argument(
        "--widen",
        action="store_true",
        help="pack each hyperprior-small as the hyperprior of N 128, M 192 widened from it (ids NEW=FROM@LAMBDA)",
    )
    t = sub.add_parser("train")
    t.add_argument("codec_id")
    t.add_argument("--out", required=True)
    t.add_argument("--budget-s", type=float, default=420.0)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--crop", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cuda")
    t.add_argument("--log-every", type=int, default=100)
    t.add_argument("--save-every-s", type=float, default=60.0)
    t.add_argument(
        "--levels", type=float, default=0.0, help="share of one-channel crops level-augmented (train-base --levels)"
    )
    t.add_argument(
        "--train",
        default="all",
        choices=["all", "context"],
        help="all weights, or a checkerboard codec's context alone",
    )
    e = sub.add_parser("export")
    e.add_argument("codec_id")
    e.add_argument("state", help="the .safetensors a train run wrote")
    e.add_argument("--to", required=True, help="staging folder (put it on TTFT_ZOO_PATH to evaluate)")
    e.add_argument("--shared-by", type=int, required=True)
    e.add_argument("--command", required=True, help="the command that ran on the device, for the card")
    args = parser.parse_args()
    {"pack": pack, "train": train, "export": export}[args.verb](args)


if __name__ == "__main__":
    main()
