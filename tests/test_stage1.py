"""Stage 1: train-adapter writes a loadable adapter with its card, resumes from its checkpoint, and
the adapter store feeds ingest (closed set and open set) and the decoder, which refuses a
different adapter file under the same id."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ttft_archive.adapters.adapter_files import load_adapter, save_adapter
from ttft_archive.adapters.zoo import adapter_store, open_codec
from ttft_archive.configs import load_settings
from ttft_archive.flows.evaluation.roundtrip import roundtrip
from ttft_archive.flows.jobs import codec_setup
from ttft_archive.flows.jobs.tiles import decoders_for, profile_settings
from ttft_archive.flows.training.task_adapter import TrainAdapterJob, run
from ttft_archive.ttft_core import TileCodec, TTFTError, bitstream, finetune
from ttft_archive.ttft_core.digest import tensors_digest
from ttft_archive.ttft_core.tasks import get_task

from .conftest import SAMPLES, crop

CODEC = "hyperprior-small"  # untrained and seeded: the same weights in every process
CODEC_ID = "untrained-hyperprior-small-c3"


def tiny_data(folder: Path) -> Path:
    """Four 96-pixel crops of the bundled Kodak excerpt: three to train on, one held out."""
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(SAMPLES / "kodim23_crop256.png") as im:
        for i, (left, top) in enumerate([(0, 0), (160, 0), (0, 160), (160, 160)]):
            im.crop((left, top, left + 96, top + 96)).save(folder / f"{i}.png")
    return folder


def job(tmp: Path, **changes) -> TrainAdapterJob:
    base = dict(
        task="edges",
        codec=CODEC,
        data=[str(tiny_data(tmp / "data"))],
        run_dir=str(tmp / "run"),
        out=str(tmp / "store"),
        steps=4,
        batch=2,
        crop=64,
        eval_crop=64,
        eval_crops=2,
        checkpoint_every=2,
        log_every=1,
        command="test",
    )
    return TrainAdapterJob(**(base | changes))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One few-step edges adapter for the untrained codec, in a store folder of its own."""
    tmp = tmp_path_factory.mktemp("stage1")
    return run(job(tmp), log=lambda _: None)


@pytest.fixture()
def store(trained, monkeypatch) -> Path:
    monkeypatch.setenv("TTFT_ADAPTER_PATH", str(trained.parent))
    return trained.parent


def test_train_adapter_writes_a_loadable_adapter_whose_card_names_its_codec(trained):
    state, card = load_adapter(trained)
    assert trained.name == f"{CODEC_ID}--edges.safetensors"
    model, _, _ = open_codec(CODEC, channels=3)
    assert card["codec"] == CODEC_ID and card["codec_sha256"] == TileCodec(model, CODEC_ID).codec_digest.hex()
    assert card["task"] == "edges" and card["steps"] == 4 and card["adapter_sha256"] == tensors_digest(state).hex()
    assert len(card["train_files"]) == 3 and len(card["held_out_files"]) == 1
    assert not set(card["train_files"]) & set(card["held_out_files"])
    for side in ("adapter", "base"):
        figures = card["evaluation"][side]
        assert figures["crops"] == 2 and figures["bpp"] > 0 and "edge_psnr_db" in figures
    # training moved the singular values off zero on both sides (they start at zero)
    assert state["g_a.0.lora_s"].abs().sum() > 0 and state["g_s.0.lora_s"].abs().sum() > 0


def test_a_resumed_run_continues_from_its_checkpoint(tmp_path):
    straight = load_adapter(run(job(tmp_path / "a"), log=lambda _: None))[0]
    lines = []

    def stop_at_step_3(line):
        lines.append(line)
        if "step 3/4" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(job(tmp_path / "b"), log=stop_at_step_3)
    assert not (tmp_path / "b" / "store").exists()  # nothing is exported before the last step
    lines.clear()
    resumed_path = run(job(tmp_path / "b"), log=lines.append)
    assert lines[0].startswith(f"resuming {CODEC_ID}--edges at step 2")
    resumed, card = load_adapter(resumed_path)
    assert card["steps"] == 4
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # as if never stopped
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3, 4]  # step 3 ran twice: once before the stop, once after the resume


def test_closed_set_adapter_codes_and_a_different_file_is_refused(store, kodak_crop):
    settings = load_settings(ttft={"steps": 2})
    codec, ttft = codec_setup.prepare(settings, CODEC, 3, task="edges")
    assert codec.adapter_id == f"{CODEC_ID}--edges"
    tile = crop(kodak_crop, 0, 0, 64, 64)
    result = finetune(codec, tile, get_task("edges").loss, ttft)
    data = codec.compress(tile, result.state)
    header = bitstream.unpack(data).header
    assert header.adapter_id == f"{CODEC_ID}--edges" and header.adapter_sha256 == codec.adapter_digest
    coders = {3: (codec, ttft)}
    profile = profile_settings("edges", coders)
    assert profile["coders"]["3"]["adapter"] == f"{CODEC_ID}--edges"
    decoder = decoders_for(profile)[3]
    assert torch.equal(decoder.decompress(data), codec.decompress(data))
    # the store now holds another file under the same id: the archive's adapter is gone
    state, card = load_adapter(store / f"{CODEC_ID}--edges.safetensors")
    other = store.parent / "other"
    save_adapter(other / f"{CODEC_ID}--edges.safetensors", {k: v + 0.01 for k, v in state.items()}, card)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTFT_ADAPTER_PATH", str(other))
        with pytest.raises(TTFTError, match="not the one .* the archive was written with"):
            decoders_for(profile)


def test_the_planner_and_the_worker_each_read_the_adapter_file_once(store, monkeypatch):
    reads, real = [], adapter_store.load_adapter
    monkeypatch.setattr(adapter_store, "load_adapter", lambda path: reads.append(path) or real(path))
    coder = codec_setup.task_coder(load_settings(), CODEC, 3, "edges")
    assert len(reads) == 1  # the planner's: the sha256 the profile records
    codec, _ = codec_setup.build(coder)
    assert len(reads) == 2 and codec.adapter_id == f"{CODEC_ID}--edges"  # the worker's: found by it, then attached


def test_open_set_starts_from_another_tasks_adapter(store):
    edges = f"{CODEC_ID}--edges"
    plain = load_settings()
    assert codec_setup.choose_adapter(plain, CODEC_ID, "pixel", ttft_steps=0) is None
    assert codec_setup.choose_adapter(plain, CODEC_ID, "pixel", ttft_steps=5) == codec_setup.ZERO_ADAPTER
    open_set = load_settings(adapter={"from_task": "edges"})
    assert codec_setup.choose_adapter(open_set, CODEC_ID, "pixel", ttft_steps=5) == edges
    assert codec_setup.choose_adapter(open_set, "untrained-hyperprior-small-c1", "pixel", 5) == "zero"
    with pytest.raises(TTFTError, match="adapter.from_task 'edgez' is not a task"):
        codec_setup.choose_adapter(load_settings(adapter={"from_task": "edgez"}), CODEC_ID, "pixel", 5)
    report = roundtrip(codec=CODEC, task="pixel", ttft_steps=2, adapter_from="edges")
    assert report["adapter"] == edges and report["bytes"] > 0
    closed_off = load_settings(adapter={"stage1": False})
    assert codec_setup.choose_adapter(closed_off, CODEC_ID, "edges", ttft_steps=0) is None


def test_an_adapter_for_other_codec_weights_is_refused(store):
    model, _, _ = open_codec(CODEC, channels=3)
    state, card = load_adapter(store / f"{CODEC_ID}--edges.safetensors")
    with pytest.raises(TTFTError, match="was trained on codec"):
        codec_setup.attach_stored_adapter(model, "untrained-tic-small-c3", f"{CODEC_ID}--edges")
    assert adapter_store.find_adapter(f"{CODEC_ID}--edges", sha256="00" * 32) is None


def test_ingest_and_query_through_the_jobs_use_the_stage1_adapter(store, tmp_path):
    from ttft_archive.adapters.archive import Archive
    from ttft_archive.flows.jobs.raster import ingest_raster, query_raster

    url = str(tmp_path / "a.zarr")
    report = ingest_raster(
        str(SAMPLES / "landsat8_224078_rgb_crop256.tif"), url, task="edges", codec=CODEC, tile=128, ttft_steps=0
    )
    profile = Archive(url).profile(report["id"], "edges")
    assert profile.settings["coders"]["3"]["adapter"] == f"{CODEC_ID}--edges"
    assert bitstream.unpack(profile.read_tile((0, 0, 0))).header.adapter_id == f"{CODEC_ID}--edges"
    assert query_raster(url, report["id"], task="edges")["shape"] == [3, 256, 256]


def test_ingest_adapter_from_starts_an_open_set_task_from_another_tasks_adapter(store, tmp_path, capsys):
    """``ttft ingest --adapter-from``: the profile of a task with no adapter of its own names the
    other task's adapter, every tile carries it, and the archive decodes."""
    from ttft_archive.adapters.archive import Archive
    from ttft_archive.flows.cli import main
    from ttft_archive.flows.jobs.raster import query_raster

    url = str(tmp_path / "a.zarr")
    source = str(SAMPLES / "landsat8_224078_rgb_crop256.tif")
    args = [
        "ingest",
        source,
        "--archive",
        url,
        "--task",
        "pixel",
        "--codec",
        CODEC,
        "--tile",
        "128",
        "--ttft-steps",
        "1",
        "--adapter-from",
        "edges",
        "--json",
    ]
    assert main(args) == 0
    [report] = json.loads(capsys.readouterr().out)
    profile = Archive(url).profile(report["id"], "pixel")
    assert profile.settings["coders"]["3"]["adapter"] == f"{CODEC_ID}--edges"
    assert {bitstream.unpack(profile.read_tile((0, r, c))).header.adapter_id for r in (0, 1) for c in (0, 1)} == {
        f"{CODEC_ID}--edges"
    }
    assert query_raster(url, report["id"], task="pixel")["shape"] == [3, 256, 256]
    bad = [
        "ingest",
        source,
        "--archive",
        str(tmp_path / "b.zarr"),
        "--task",
        "pixel",
        "--codec",
        CODEC,
        "--ttft-steps",
        "1",
        "--adapter-from",
        "edgez",
    ]
    assert main(bad) != 0
    assert "adapter.from_task 'edgez' is not a task" in capsys.readouterr().err
    assert not (tmp_path / "b.zarr").exists()


def test_train_adapter_command_and_adapter_listing(tmp_path, monkeypatch, capsys):
    from ttft_archive.flows.cli import main

    data = tiny_data(tmp_path / "data")
    monkeypatch.setenv("TTFT_ADAPTER_PATH", str(tmp_path / "store"))
    args = [
        "train-adapter",
        str(data),
        "--task",
        "pixel",
        "--codec",
        CODEC,
        "--modality",
        "rgb8",
        "--steps",
        "1",
        "--batch",
        "1",
        "--crop",
        "64",
        "--eval-crop",
        "64",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("done: ")
    assert main(["adapters", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    # the user folder comes first, the shipped adapters after it
    assert listing[0]["id"] == f"{CODEC_ID}--pixel" and listing[0]["steps"] == 1
    assert all(Path(a["path"]).parent == adapter_store.SHIPPED_ADAPTERS for a in listing[1:])
    (tmp_path / "one").mkdir()
    (data / "0.png").rename(tmp_path / "one" / "0.png")
    assert main([*args[:1], str(tmp_path / "one"), *args[2:]]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "needs at least 2 data files" in lines[0]
