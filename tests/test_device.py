"""Where TTFT runs: the device setting and its checks, how it reaches jobs, and the engine's path
through the device code, all on the CPU. Nothing here needs a GPU: where a test asks whether one
is there, torch.cuda's answer is set."""

import copy

import pytest
import torch

from ttft_archive.configs import load_settings
from ttft_archive.configs.settings import TTFTSettings
from ttft_archive.flows.jobs.tiles import profile_settings, tiles_per_batch
from ttft_archive.ttft_core import TileCodec, TTFTConfig, TTFTError, compress_tuned, finetune, finetune_batch, lora

from .conftest import SAMPLES, crop
from .test_bitstream import make_codec

CONFIG = TTFTConfig(steps=3, lr=5e-2, seed=5, latent_steps=2, latent_lr=0.01)


def gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_cpu_and_cuda_parse_and_auto_takes_a_gpu_when_there_is_one(monkeypatch):
    assert TTFTSettings().device == "auto"
    gpus(monkeypatch, 0)
    assert load_settings(ttft={"device": "auto"}).ttft.to_core().device == "cpu"
    assert load_settings(ttft={"device": "cpu"}).ttft.to_core().device == "cpu"
    gpus(monkeypatch, 2)
    for value, core in (("auto", "cuda"), ("cpu", "cpu"), ("cuda", "cuda"), ("cuda:0", "cuda:0"), ("cuda:1", "cuda:1")):
        assert load_settings(ttft={"device": value}).ttft.to_core().device == core


@pytest.mark.parametrize(
    "gpu_count,value,needle",
    [
        (0, "gpu", "expected auto, cpu, cuda or cuda:N"),
        (0, "cuda:", "expected auto, cpu, cuda or cuda:N"),
        (0, "CPU", "expected auto, cpu, cuda or cuda:N"),
        (0, "cuda", "this machine has no CUDA devices"),
        (0, "cuda:0", "this machine has no CUDA devices"),
        (1, "cuda:1", "this machine has 1 CUDA device"),
    ],
)
def test_anything_else_and_a_missing_gpu_are_refused_in_one_line(monkeypatch, gpu_count, value, needle):
    gpus(monkeypatch, gpu_count)
    with pytest.raises(TTFTError) as refused:
        load_settings(ttft={"device": value})
    message = str(refused.value)
    assert "\n" not in message and message.startswith("setting ttft.device:") and needle in message, message


def test_a_gpu_tunes_from_its_own_batch_budget(monkeypatch):
    gpus(monkeypatch, 1)
    on_cpu, on_gpu = (load_settings(ttft={"device": d}).ttft for d in ("cpu", "cuda"))
    assert on_cpu.batch_budget() == on_cpu.batch_pixels
    assert on_gpu.batch_budget() == on_gpu.gpu_batch_pixels > on_gpu.batch_pixels
    assert tiles_per_batch(on_gpu.batch_budget(), 256) > tiles_per_batch(on_cpu.batch_budget(), 256) == 1


def test_the_device_reaches_a_job_but_not_its_profile(monkeypatch, tmp_path):
    """A job carries the device to its workers and the GPU's batch; the profile (and so every tile
    key) leaves it out, so an ingest begun on one machine goes on on another."""
    from ttft_archive.flows.jobs.raster import plan_raster

    gpus(monkeypatch, 1)
    source, archive = str(SAMPLES / "landsat8_224078_rgb_crop256.tif"), str(tmp_path / "a.zarr")
    on_gpu = plan_raster(source, archive, codec="rgb-hyperprior-q0", tile=64, ttft_steps=1, device="cuda")
    on_cpu = plan_raster(source, archive, codec="rgb-hyperprior-q0", tile=64, ttft_steps=1, device="cpu")
    assert (on_gpu.coders[3].device, on_cpu.coders[3].device) == ("cuda", "cpu")
    assert on_gpu.batch == load_settings().ttft.gpu_batch_pixels // 64**2 and on_cpu.batch == 16
    assert on_gpu.settings == on_cpu.settings and "device" not in on_gpu.settings["coders"]["3"]["ttft"]
    coder = on_cpu._coders()[3]
    assert coder[1].device == "cpu"


def test_the_engine_refuses_a_device_it_cannot_use(monkeypatch, kodak_crop):
    codec = make_codec("hyperprior", 3)
    tile = crop(kodak_crop, 0, 0, 64, 64)
    with pytest.raises(TTFTError, match="unknown device 'gpu'"):
        finetune(codec, tile, config=TTFTConfig(steps=1, device="gpu"))
    with pytest.raises(TTFTError, match="cpu or cuda"):
        finetune(codec, tile, config=TTFTConfig(steps=1, device="meta"))
    gpus(monkeypatch, 0)
    with pytest.raises(TTFTError, match="has 0 CUDA device"):
        finetune(codec, tile, config=TTFTConfig(steps=1, device="cuda"))


def test_tuning_on_a_copy_of_the_model_gives_the_same_tiles(monkeypatch, kodak_crop):
    """What a GPU does, on the CPU: the steps run on the codec's copy of its model, the results come
    back as CPU tensors, and the codec codes them as if it had tuned them itself."""
    codec = make_codec("hyperprior", 3)
    tiles = [crop(kodak_crop, 0, 0, 64, 64), crop(kodak_crop, 96, 64, 64, 64)]
    own = finetune_batch(codec, tiles, config=CONFIG)
    copied = copy.deepcopy(codec.model)
    monkeypatch.setattr(TileCodec, "tuning_model", lambda self, device: copied)
    before = lora.adapter_state(codec.model)
    on_copy = finetune_batch(codec, tiles, config=TTFTConfig(**{**CONFIG.__dict__, "device": torch.device("cpu")}))
    for tile, a, b in zip(tiles, own, on_copy):
        assert a.losses == b.losses and a.best_step == b.best_step
        assert all(v.device.type == "cpu" for v in b.state.values()) and (b.latents is None or not b.latents.is_cuda)
        assert compress_tuned(codec, tile, a) == compress_tuned(codec, tile, b)
    assert all(torch.equal(v, before[k]) for k, v in lora.adapter_state(codec.model).items())
    assert all(layer.tile_factors is None for _, layer in lora.lora_layers(copied))
    assert not any(p.requires_grad for p in copied.parameters())


def test_a_profile_stores_no_device():
    codec = make_codec("hyperprior", 3)
    stored = profile_settings("pixel", {3: (codec, TTFTConfig(steps=2, device="cpu"))})
    assert "device" not in stored["coders"]["3"]["ttft"] and stored["coders"]["3"]["ttft"]["steps"] == 2
