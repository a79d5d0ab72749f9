"""The checkerboard-context codec: decodable in two halves, grown from a hyperprior, its context
trained alone (TTFT's pricing of it: test_ttft)."""

import json

import pytest
import torch

from ttft_archive.adapters import zoo
from ttft_archive.adapters.zoo import open_codec
from ttft_archive.ttft_core import TileCodec, TTFTError, build, preset
from ttft_archive.ttft_core.backbones import grow_from_hyperprior
from ttft_archive.ttft_core.backbones.checkerboard import anchor_mask

from .conftest import crop, tiny_config


def grown_from(hyperprior: torch.nn.Module, context_std: float = 0.0) -> torch.nn.Module:
    """A checkerboard codec holding a hyperprior's weights; its context perturbed when asked."""
    model = build(preset("checkerboard-small", hyperprior.config.channels))
    grow_from_hyperprior(model, hyperprior)
    if context_std:
        torch.manual_seed(0)
        torch.nn.init.normal_(model.context.entropy_parameters[-1].weight, std=context_std)
    return model.eval()


def test_the_second_half_sees_the_anchors_and_nothing_else():
    """What makes the halves decodable: no parameter depends on a latent decoded after it."""
    torch.manual_seed(0)
    model = build(tiny_config("checkerboard", 3)).eval()
    torch.nn.init.normal_(model.context.entropy_parameters[-1].weight, std=0.1)
    y = torch.randn(1, 24, 6, 6) * 3
    hyper = torch.randn(1, 48, 6, 6)
    anchors = anchor_mask(6, 6)
    base = torch.cat(model.gaussian_parameters(y, hyper), 1)
    for (r, c), kind in (((2, 3), "other"), ((2, 2), "anchor")):
        moved = y.clone()
        moved[0, :, r, c] += 5.0
        changed = (torch.cat(model.gaussian_parameters(moved, hyper), 1) != base).any(1)[0]
        assert not changed[anchors].any()  # anchors see the hyperprior alone
        if kind == "other":  # a non-anchor's value reaches no parameter at all
            assert not changed.any()
        else:  # an anchor reaches its non-anchor neighbours, not itself
            assert changed[2, 3] and changed[1, 2] and not changed[2, 2]


def test_grown_from_a_hyperprior_it_decodes_alike_until_its_context_learns(kodak_crop):
    hyperprior, codec_id, _ = open_codec("rgb-hyperprior-q3")
    tile = crop(kodak_crop, 20, 10, 128, 192)
    plain = TileCodec(hyperprior, codec_id)
    grown = TileCodec(grown_from(hyperprior), "grown")
    plain_bytes, grown_bytes = plain.compress(tile), grown.compress(tile)
    assert torch.equal(grown.decompress(grown_bytes), plain.decompress(plain_bytes))
    assert abs(len(grown_bytes) - len(plain_bytes)) <= 16  # the halves' order moves a few bytes at most
    learned = TileCodec(grown_from(hyperprior, context_std=0.02), "learned")
    data = learned.compress(tile)
    assert not torch.equal(learned.decompress(data), plain.decompress(plain_bytes))
    assert learned.decompress(data).shape == tile.shape


def test_training_the_context_alone_leaves_every_other_weight_as_it_started(zoo_dir, tmp_path):
    from ttft_archive.flows.training.base_codec import CONTEXT_ONLY_NOTE, TrainBaseJob, run

    from .test_stage1 import tiny_data

    torch.manual_seed(0)
    start = build(preset("hyperprior-small"))
    zoo.save_codec(zoo_dir, "start-q1", start, {"family": "rgb", "lambda": 0.01})
    job = TrainBaseJob(
        codec_id="grown-q1", data=[str(tiny_data(tmp_path / "data"))], run_dir=str(tmp_path / "run"),
        size="checkerboard-small", lmbda=0.01, steps=2, batch=2, crop=64, lr=1e-2, init_from="start-q1",
        train="context", export_to=str(zoo_dir),
    )  # fmt: skip
    card = json.loads(run(job, log=lambda _: None).read_text())
    assert card["trained"] == CONTEXT_ONLY_NOTE and card["backbone"]["backbone"] == "checkerboard"
    trained = zoo.load_codec(zoo.find_codec("grown-q1")).state_dict()
    for name, value in start.state_dict().items():
        assert torch.equal(trained[name], value), name
    assert trained["context.entropy_parameters.4.weight"].abs().sum() > 0  # it started at zero
    # its context-only log has no PSNR: the synthesis was not run
    assert "psnr" not in json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    with pytest.raises(TTFTError, match="only a codec with a context"):
        run(job.model_copy(update={"size": "hyperprior-small", "run_dir": str(tmp_path / "r2")}), log=lambda _: None)
    zoo.save_codec(zoo_dir, "tic-q1", build(preset("tic-small")), {"family": "rgb", "lambda": 0.01})
    with pytest.raises(TTFTError, match="architecture differs"):
        run(job.model_copy(update={"init_from": "tic-q1", "run_dir": str(tmp_path / "r3")}), log=lambda _: None)


def _grown_tiny(base: torch.nn.Module) -> torch.nn.Module:
    model = build(tiny_config("checkerboard", base.config.channels))
    grow_from_hyperprior(model, base)
    torch.nn.init.normal_(model.context.entropy_parameters[-1].weight, std=0.05)
    return model.eval()


def test_a_grown_codec_is_stored_as_its_context_and_loads_as_the_whole(zoo_dir, kodak_crop):
    torch.manual_seed(0)
    zoo.save_codec(zoo_dir, "base-q1", build(tiny_config("hyperprior", 3)), {"family": "rgb", "lambda": 0.01})
    base = zoo.find_codec("base-q1")
    grown = _grown_tiny(zoo.load_codec(base))
    zoo.save_codec(zoo_dir, "grown-q1", grown, {"family": "rgb", "lambda": 0.01}, grown_from=base)
    entry = zoo.find_codec("grown-q1")
    assert entry.card["grown_from"] == {"id": "base-q1", "sha256": base.card["sha256"]}
    from safetensors.torch import load_file

    assert set(load_file(entry.weights)) == {k for k in grown.state_dict() if k.startswith("context.")}
    tile = crop(kodak_crop, 0, 0, 64, 64)
    loaded = TileCodec(zoo.load_codec(entry), "grown-q1")
    original = TileCodec(grown, "grown-q1")
    assert loaded.codec_digest == original.codec_digest and loaded.compress(tile) == original.compress(tile)
    zoo.save_codec(zoo_dir, "whole-q1", grown, dict(entry.card))  # its card copied, the weights whole
    assert "grown_from" not in zoo.find_codec("whole-q1").card
    assert TileCodec(zoo.load_codec(zoo.find_codec("whole-q1")), "x").codec_digest == original.codec_digest
    # a codec whose other weights moved is no grown codec: it is refused, not stored as its context
    moved = _grown_tiny(zoo.load_codec(base))
    with torch.no_grad():
        moved.g_s[0].bias.add_(0.1)
    with pytest.raises(TTFTError, match="differ from 'base-q1'"):
        zoo.save_codec(zoo_dir, "moved-q1", moved, {"family": "rgb", "lambda": 0.01}, grown_from=base)
    # the codec it grew from replaced by other weights: the grown codec no longer opens
    zoo.save_codec(zoo_dir, "base-q1", build(tiny_config("hyperprior", 3)), {"family": "rgb", "lambda": 0.01})
    with pytest.raises(TTFTError, match="grew from 'base-q1' with sha256"):
        zoo.open_codec("grown-q1")


def test_shipping_a_grown_codec_binds_its_base_codecs_stage1_adapters_to_it(zoo_dir, tmp_path, monkeypatch):
    import importlib.util

    from ttft_archive.adapters.adapter_files import save_adapter
    from ttft_archive.flows.jobs.codec_setup import attach_stored_adapter
    from ttft_archive.ttft_core import attach_adapter, lora
    from ttft_archive.ttft_core.digest import base_weights, tensors_digest

    from .conftest import ROOT

    spec = importlib.util.spec_from_file_location("ship_grown_codecs", ROOT / "infra" / "ship_grown_codecs.py")
    ship_grown = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship_grown)
    staged, adapters = tmp_path / "staged", tmp_path / "adapters"
    monkeypatch.setenv("TTFT_ZOO_PATH", f"{staged}:{zoo_dir}")
    monkeypatch.setenv("TTFT_ADAPTER_PATH", str(adapters))
    torch.manual_seed(0)
    zoo.save_codec(zoo_dir, "base-q1", build(tiny_config("hyperprior", 1)), {"family": "gray16", "lambda": 0.1})
    base = zoo.find_codec("base-q1")
    with_adapter = attach_adapter(zoo.load_codec(base))
    for _, layer in lora.lora_layers(with_adapter):
        torch.nn.init.normal_(layer.lora_s, std=0.01)
    card = {"codec": "base-q1", "codec_sha256": tensors_digest(base_weights(zoo.load_codec(base))).hex()}
    save_adapter(adapters / "base-q1--ct-lung-window.safetensors", lora.adapter_state(with_adapter), card)
    trained_card = {"family": "gray16", "lambda": 0.1, "init_from": "base-q1", "init_from_card": base.card}
    zoo.save_codec(staged, "grown-q1", _grown_tiny(zoo.load_codec(base)), trained_card)

    written = ship_grown.ship(staged, "grown-q1", zoo_dir, adapters)

    assert written == ["grown-q1--ct-lung-window"]
    monkeypatch.setenv("TTFT_ZOO_PATH", str(zoo_dir))  # the staged copy gone: the shipped one is used
    assert zoo.find_codec("grown-q1").card["grown_from"]["id"] == "base-q1"
    model = zoo.load_codec(zoo.find_codec("grown-q1"))
    rebound = attach_stored_adapter(model, "grown-q1", "grown-q1--ct-lung-window")
    assert rebound["rebound_from"]["adapter"] == "base-q1--ct-lung-window"
    theirs = lora.adapter_state(with_adapter)
    assert all(torch.equal(v, theirs[k]) for k, v in lora.adapter_state(model).items()) and len(theirs) > 0
    # a codec staged from other weights than the zoo's is refused
    zoo.save_codec(staged, "other-q1", _grown_tiny(zoo.load_codec(base)), {**trained_card, "init_from_card": {}})
    monkeypatch.setenv("TTFT_ZOO_PATH", f"{staged}:{zoo_dir}")
    with pytest.raises(TTFTError, match="did not grow from the zoo's 'base-q1'"):
        ship_grown.ship(staged, "other-q1", zoo_dir, adapters)


# (family, bundled image, the most bytes a checkerboard point may take, as a share of its
# hyperprior point's): rgb's contexts save 1 to 5% on Kodak, gray16's 0.8% (q5) to 10% on CT
# (q5 takes 27,671 bytes of the hyperprior's 27,957 on this slice, at one to four threads alike)
SHIPPED_FAMILIES = [("gray16", "ct_crop", 0.99), ("rgb", "kodak_crop", 1.0)]


@pytest.mark.parametrize("family, image, share", SHIPPED_FAMILIES)
def test_each_shipped_checkerboard_point_codes_in_fewer_bytes_than_its_hyperprior(
    family, image, share, request, monkeypatch
):
    """What the grown points ship for: the hyperprior's reconstruction (the transforms are the same
    weights) in fewer real bytes, on a bundled CT slice or photograph."""
    from ttft_archive.ttft_core.metrics import psnr

    x = request.getfixturevalue(image)
    monkeypatch.delenv("TTFT_ZOO_PATH", raising=False)
    grown = [e.codec_id for e in zoo.family_rate_points(family, "checkerboard")]
    default_range = {zoo.quality_of(e.codec_id) for e in zoo.family_rate_points(family) if not e.card.get("opt_in")}
    assert default_range <= {zoo.quality_of(g) for g in grown}, "a family ships whole over its default range"
    for codec_id in grown:
        context = TileCodec(*open_codec(codec_id)[:2])
        plain_id = codec_id.replace("-checkerboard-", "-hyperprior-")
        plain = TileCodec(*open_codec(plain_id)[:2])
        context_bytes, plain_bytes = context.compress(x), plain.compress(x)
        assert len(context_bytes) < share * len(plain_bytes), codec_id
        change = psnr(context.decompress(context_bytes), x) - psnr(plain.decompress(plain_bytes), x)
        assert abs(change) < 0.15, (codec_id, change)
