"""The lent-GPU fine-tuning path end to end, on the CPU: pack a shipped codec with training images,
train it for a few seconds the way the device does (compressai's C++ modules replaced by the
packed stubs), export it, and code a tile with the result."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from ttft_archive.adapters import zoo
from ttft_archive.adapters.image_files import read_luma_u8
from ttft_archive.ttft_core import TileCodec
from ttft_archive.ttft_core.metrics import psnr

from .conftest import SAMPLES, crop

ROOT = Path(__file__).resolve().parents[1]
CODEC = "rgb-hyperprior-q0"


def gpu_finetune(*args, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, str(ROOT / "infra" / "gpu_finetune.py"), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)


def train_on_cpu(codec: str, out: Path, budget_s: float, *extra) -> tuple:
    """The train step's arguments for a few seconds on the CPU, in small batches."""
    return ("train", codec, "--out", out, "--budget-s", budget_s, "--batch", 2, "--crop", 64, "--device", "cpu", *extra)


def site(pack: Path) -> str:
    """The PYTHONPATH of the device: the pack's stand-ins for compressai's C++ modules, then the project."""
    return f"{pack / 'site'}{os.pathsep}{ROOT}"


def test_pack_train_export_gives_a_codec_that_codes(tmp_path, monkeypatch, kodak_crop):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLES / "kodim23_crop256.png", images)
    pack = tmp_path / "pack"
    done = gpu_finetune("--pack", pack, "pack", CODEC, "--data", images, "--budget-mb", 60)
    assert done.returncode == 0, done.stderr
    assert (pack / "data.txt").read_text().split() == [str(images / "kodim23_crop256.png")]
    packed = load_file(pack / "models" / f"{CODEC}.safetensors")
    assert packed["g_a.0.weight"].dtype == torch.float16  # half the bytes to carry
    assert not any(k.endswith("_quantized_cdf") for k in packed)  # rebuilt at export
    assert (pack / "site" / "compressai" / "_CXX.py").is_file()

    out = tmp_path / "out"
    out.mkdir()
    done = gpu_finetune("--pack", pack, *train_on_cpu(CODEC, out, 4, "--log-every", 1), pythonpath=site(pack))
    assert done.returncode == 0, done.stderr
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["images"] == 1
    assert log[-1]["event"] == "done" and log[-1]["steps"] >= 2

    stage = tmp_path / "stage"
    listing = (pack / "data.txt").read_text()
    (pack / "data.txt").write_text(listing + "another.jpg\n")  # as if packed again since the run
    refused = gpu_finetune(
        "--pack",
        pack,
        "export",
        CODEC,
        out / f"{CODEC}.safetensors",
        "--to",
        stage,
        "--shared-by",
        1,
        "--command",
        "the test",
    )
    assert refused.returncode != 0 and "not the listing" in refused.stderr and not stage.exists()
    (pack / "data.txt").write_text(listing)
    done = gpu_finetune(
        "--pack",
        pack,
        "export",
        CODEC,
        out / f"{CODEC}.safetensors",
        "--to",
        stage,
        "--shared-by",
        1,
        "--command",
        "the test",
    )
    assert done.returncode == 0, done.stderr
    card = json.loads((stage / f"{CODEC}.json").read_text())
    assert card["steps"] == log[-1]["steps"] and card["init_from"] == CODEC and card["batch"] == 2
    assert card["train_files"] == [str(images / "kodim23_crop256.png")] and card["command"] == "the test"

    shipped = zoo.load_codec(zoo.find_codec(CODEC))
    monkeypatch.setenv("TTFT_ZOO_PATH", str(stage))
    entry = zoo.find_codec(CODEC)
    assert entry.weights.parent == stage
    tuned = zoo.load_codec(entry)  # checks the card's sha256
    assert not torch.equal(tuned.g_a[0].weight, shipped.g_a[0].weight)  # training moved the weights
    codec = TileCodec(tuned, CODEC)
    tile = crop(kodak_crop, 0, 0, 128, 128)
    data = codec.compress(tile)
    assert psnr(codec.decompress(data), tile) > 20


def test_pack_refuses_to_replace_a_folder_that_is_no_pack(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    done = gpu_finetune("--pack", precious, "pack", CODEC, "--data", tmp_path)
    assert done.returncode != 0 and "not replacing it" in done.stderr
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_new_rate_point_is_packed_trained_and_exported_under_its_own_id(tmp_path, monkeypatch):
    """NEW=FROM@LAMBDA: the start's weights under a card of the new id and lambda; the export is a
    codec of that id whose card says what it started from. A one-channel point (a gray16 pack
    takes a photograph's luma) trains with level augmentation here, and its card says so."""
    from ttft_archive.adapters.crops import levels_note

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLES / "kodim23_crop256.png", images)
    pack, out, stage, new, start = (
        tmp_path / "pack",
        tmp_path / "out",
        tmp_path / "stage",
        "gray16-hyperprior-q9",
        "gray16-hyperprior-q4",
    )
    done = gpu_finetune("--pack", pack, "pack", f"{new}={start}@1.0", "--modality", "gray16", "--data", images)
    assert done.returncode == 0, done.stderr
    packed = json.loads((pack / "models" / f"{new}.json").read_text())
    assert (packed["id"], packed["lambda"], packed["packed_from_card"]["id"]) == (new, 1.0, start)
    out.mkdir()
    done = gpu_finetune("--pack", pack, *train_on_cpu(new, out, 3, "--levels", 0.5), pythonpath=site(pack))
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["lambda"] == 1.0
    done = gpu_finetune(
        "--pack", pack, "export", new, out / f"{new}.safetensors", "--to", stage, "--shared-by", 1, "--command", "t"
    )
    assert done.returncode == 0, done.stderr
    card = json.loads((stage / f"{new}.json").read_text())
    assert (card["lambda"], card["init_from"], card["init_from_card"]["id"], card["family"]) == (
        1.0,
        start,
        start,
        "gray16",
    )
    assert card["augmentation"] == levels_note(0.5)
    monkeypatch.setenv("TTFT_ZOO_PATH", str(stage))
    codec = TileCodec(zoo.load_codec(zoo.find_codec(new)), new)
    tile = torch.from_numpy(read_luma_u8(SAMPLES / "kodim23_crop256.png")[:128, :128] / 255.0).float()[None]
    assert psnr(codec.decompress(codec.compress(tile)), tile) > 20


def test_a_malformed_new_rate_point_is_refused_in_one_line(tmp_path):
    done = gpu_finetune("--pack", tmp_path / "pack", "pack", f"x={CODEC}@fast", "--data", tmp_path)
    assert done.returncode != 0 and "NEW=FROM@LAMBDA" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "pack").exists()


def test_a_checkerboard_codec_grows_from_a_packed_hyperprior_and_trains_its_context_alone(tmp_path, monkeypatch):
    """--checkerboard packs the hyperprior as the checkerboard codec of its size; --train context
    moves the context only, and the export codes with the hyperprior's very transforms."""
    from ttft_archive.flows.training.base_codec import CONTEXT_ONLY_NOTE

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLES / "kodim23_crop256.png", images)
    pack, out, stage, grown = tmp_path / "pack", tmp_path / "out", tmp_path / "stage", "rgb-checkerboard-q0"
    done = gpu_finetune("--pack", pack, "pack", CODEC, "--checkerboard", "--data", images)
    assert done.returncode == 0, done.stderr
    out.mkdir()
    train = train_on_cpu(grown, out, 3, "--train", "context", "--lr", 1e-2)
    done = gpu_finetune("--pack", pack, *train, pythonpath=site(pack))
    assert done.returncode == 0, done.stderr
    done = gpu_finetune(
        "--pack", pack, "export", grown, out / f"{grown}.safetensors", "--to", stage, "--shared-by", 1, "--command", "t"
    )
    assert done.returncode == 0, done.stderr
    card = json.loads((stage / f"{grown}.json").read_text())
    assert (card["backbone"]["backbone"], card["init_from"], card["trained"]) == (
        "checkerboard",
        CODEC,
        CONTEXT_ONLY_NOTE,
    )
    monkeypatch.setenv("TTFT_ZOO_PATH", str(stage))
    trained = zoo.load_codec(zoo.find_codec(grown))
    start = zoo.load_codec(zoo.find_codec(CODEC))
    # the transforms travelled as float16 and back; only the context learned
    for name, value in start.state_dict().items():
        if name.startswith(("g_a", "g_s", "h_a", "h_s")):
            assert torch.allclose(trained.state_dict()[name], value, atol=1e-2), name
    assert trained.context.entropy_parameters[-1].weight.abs().sum() > 0
    tile = crop(
        torch.from_numpy(read_luma_u8(SAMPLES / "kodim23_crop256.png")).float()[None].repeat(3, 1, 1) / 255,
        0,
        0,
        128,
        128,
    )
    codec = TileCodec(trained, grown)
    assert psnr(codec.decompress(codec.compress(tile)), tile) > 20


def test_a_wide_codec_is_packed_widened_from_a_shipped_point_and_codes_as_it_did(tmp_path, monkeypatch, kodak_crop):
    """--widen packs NEW=FROM@LAMBDA as the hyperprior of N 128, M 192 holding FROM's weights; the
    device trains it like any other, and the export (here after a step that moves nothing) codes
    as FROM does."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLES / "kodim23_crop256.png", images)
    pack, out, stage, wide = tmp_path / "pack", tmp_path / "out", tmp_path / "stage", "rgb-wide-q0"
    refused = gpu_finetune("--pack", pack, "pack", CODEC, "--widen", "--data", images)
    assert refused.returncode != 0 and "name the wide codec" in refused.stderr and not pack.exists()
    refused = gpu_finetune("--pack", pack, "pack", "rgb-wide-q1=rgb-tic-q1@0.0018", "--widen", "--data", images)
    assert refused.returncode != 0 and "does not widen" in refused.stderr and not pack.exists()
    done = gpu_finetune("--pack", pack, "pack", f"{wide}={CODEC}@0.0009", "--widen", "--data", images)
    assert done.returncode == 0, done.stderr
    out.mkdir()
    done = gpu_finetune("--pack", pack, *train_on_cpu(wide, out, 2, "--lr", 1e-12), pythonpath=site(pack))
    assert done.returncode == 0, done.stderr
    done = gpu_finetune(
        "--pack", pack, "export", wide, out / f"{wide}.safetensors", "--to", stage, "--shared-by", 1, "--command", "t"
    )
    assert done.returncode == 0, done.stderr
    card = json.loads((stage / f"{wide}.json").read_text())
    assert (card["backbone"]["N"], card["backbone"]["M"], card["init_from"]) == (128, 192, CODEC)
    monkeypatch.setenv("TTFT_ZOO_PATH", str(stage))
    start, trained = (TileCodec(zoo.load_codec(zoo.find_codec(c)), c) for c in (CODEC, wide))
    tile = crop(kodak_crop, 0, 0, 128, 128)
    # the weights travelled as float16 and back
    assert (
        abs(psnr(trained.decompress(trained.compress(tile)), tile) - psnr(start.decompress(start.compress(tile)), tile))
        < 0.1
    )
