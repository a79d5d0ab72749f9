import copy
import json

import pytest
import torch

from ttft_archive.adapters import zoo
from ttft_archive.ttft_core import TileCodec, TTFTError, build

from .conftest import crop, tiny_config


def test_saved_codec_is_found_by_family_and_quality_and_decodes_alike(zoo_dir, kodak_crop):
    torch.manual_seed(0)
    models = {}
    for name, lmbda in (("tiny-q5", 0.02), ("tiny-q3", 0.005)):
        model = build(tiny_config("hyperprior", 3))
        zoo.save_codec(zoo_dir, name, model, {"family": "rgb", "lambda": lmbda})
        models[lmbda] = model
    assert [e.codec_id for e in zoo.family_rate_points("rgb")] == ["tiny-q3", "tiny-q5"]
    # a quality is the qN its codec id names, not a rank
    assert zoo.codec_for_quality("rgb", 3) == zoo.codec_for_quality("rgb", "3") == "tiny-q3"
    assert zoo.default_codec_id("rgb") == "tiny-q5"
    with pytest.raises(TTFTError, match="has qualities 3, 5"):
        zoo.codec_for_quality("rgb", 1)
    # a second backbone of the family has rate points of its own, and leaves the default's alone
    zoo.save_codec(zoo_dir, "tiny-tic-q4", build(tiny_config("tic", 3)), {"family": "rgb", "lambda": 0.01})
    assert [e.codec_id for e in zoo.family_rate_points("rgb")] == ["tiny-q3", "tiny-q5"]
    assert zoo.codec_for_quality("rgb", 4, backbone="tic") == zoo.default_codec_id("rgb", "tic") == "tiny-tic-q4"
    with pytest.raises(TTFTError, match=r"family 'rgb' \(tic\) has qualities 4 "):
        zoo.codec_for_quality("rgb", 3, backbone="tic")
    tile = crop(kodak_crop, 0, 0, 64, 80)
    original = TileCodec(models[0.02], "tiny-q5")
    model, codec_id, card = zoo.open_codec("tiny-q5")
    loaded = TileCodec(model, codec_id)
    assert card["lambda"] == 0.02 and loaded.codec_digest == original.codec_digest
    data = original.compress(tile)
    assert loaded.compress(tile) == data
    assert torch.equal(loaded.decompress(data), original.decompress(data))


def test_weights_that_do_not_match_their_card_are_refused(zoo_dir):
    zoo.save_codec(zoo_dir, "tiny", build(tiny_config("hyperprior", 1)), {"family": "gray16", "lambda": 0.1})
    card = json.loads((zoo_dir / "tiny.json").read_text())
    card["sha256"] = "0" * 64
    (zoo_dir / "tiny.json").write_text(json.dumps(card))
    with pytest.raises(TTFTError, match="does not match its card"):
        zoo.open_codec("tiny")
    with pytest.raises(TTFTError, match="unknown codec 'other'"):
        zoo.open_codec("other")


def test_a_zoo_path_codec_takes_the_place_of_a_shipped_one_of_the_same_id(tmp_path, monkeypatch):
    shipped, mine = tmp_path / "shipped", tmp_path / "mine"
    monkeypatch.setattr(zoo, "SHIPPED", shipped)
    monkeypatch.setenv("TTFT_ZOO_PATH", str(mine))
    torch.manual_seed(0)
    zoo.save_codec(shipped, "tiny-a", build(tiny_config("hyperprior", 3)), {"family": "rgb", "lambda": 0.01})
    zoo.save_codec(shipped, "tiny-b", build(tiny_config("hyperprior", 3)), {"family": "rgb", "lambda": 0.02})
    zoo.save_codec(mine, "tiny-a", build(tiny_config("hyperprior", 3)), {"family": "rgb", "lambda": 0.01})
    assert [e.codec_id for e in zoo.list_codecs()] == ["tiny-a", "tiny-b"]
    assert zoo.find_codec("tiny-a").weights.parent == mine
    assert zoo.find_codec("tiny-b").weights.parent == shipped


def tiny_train_job(tmp_path, zoo_dir, **fields):
    """A one-step train-base job on a few small images, exporting into ``zoo_dir``."""
    from ttft_archive.flows.training.base_codec import TrainBaseJob

    from .test_stage1 import tiny_data

    base = dict(codec_id="start-q2", data=[str(tiny_data(tmp_path / "data"))], run_dir=str(tmp_path / "run"))
    return TrainBaseJob(**base | dict(lmbda=0.02, steps=1, batch=2, crop=64, export_to=str(zoo_dir)) | fields)


def save_start_codec(zoo_dir, seed: int) -> tuple[dict, torch.nn.Module]:
    from ttft_archive.ttft_core import preset

    torch.manual_seed(seed)
    model = build(preset("hyperprior-small"))
    path = zoo.save_codec(zoo_dir, "start-q1", model, {"family": "rgb", "lambda": 0.01})
    return json.loads(path.read_text()), model


def test_a_codec_trained_from_another_keeps_the_card_it_started_from(zoo_dir, tmp_path):
    from ttft_archive.flows.training.base_codec import run

    first, _ = save_start_codec(zoo_dir, 0)
    job = tiny_train_job(tmp_path, zoo_dir, init_from="start-q1")
    assert json.loads(run(job, log=lambda _: None).read_text())["init_from_card"]["sha256"] == first["sha256"]
    # The start's id now names other weights; the resumed run still says which ones it grew from.
    assert save_start_codec(zoo_dir, 1)[0]["sha256"] != first["sha256"]
    job = job.model_copy(update={"steps": 2})
    card = json.loads(run(job, log=lambda _: None).read_text())
    assert card["steps"] == 2 and card["init_from_card"]["sha256"] == first["sha256"]


def test_a_gained_start_is_trained_from_its_scaled_latents_and_an_opt_in_card_says_so(zoo_dir, tmp_path):
    from ttft_archive.flows.training.base_codec import run

    _, start = save_start_codec(zoo_dir, 0)
    # a step that moves nothing: the export is the start as gained
    job = tiny_train_job(tmp_path, zoo_dir, lr=1e-12, init_gain=3.0, opt_in=True)
    with pytest.raises(TTFTError, match="--init-gain scales the latents of --init-from"):
        run(job, log=lambda _: None)
    card = json.loads(run(job.model_copy(update={"init_from": "start-q1"}), log=lambda _: None).read_text())
    assert card["init_gain"] == 3.0 and card["init_from"] == "start-q1" and card["opt_in"] is True
    trained = zoo.load_codec(zoo.find_codec("start-q2"))
    assert torch.allclose(trained.g_a[-1].bias, 3.0 * start.g_a[-1].bias, rtol=1e-3, atol=1e-6)
    # an opt-in point is never the family's default
    assert zoo.default_codec_id("rgb") == "start-q1" and zoo.codec_for_quality("rgb", 2) == "start-q2"


def test_level_augmented_training_is_for_one_channel_sets_and_says_so_on_its_card(zoo_dir, tmp_path):
    from ttft_archive.adapters.crops import levels_note
    from ttft_archive.flows.training.base_codec import run

    job = tiny_train_job(
        tmp_path, zoo_dir, codec_id="gray-q1", family="gray16", modality="gray16", lmbda=0.01, levels=0.5
    )
    assert json.loads(run(job, log=lambda _: None).read_text())["augmentation"] == levels_note(0.5)
    rgb = job.model_copy(update={"codec_id": "rgb-q1", "modality": "rgb8", "run_dir": str(tmp_path / "rgb")})
    with pytest.raises(TTFTError, match="--levels is for one-channel training sets"):
        run(rgb, log=lambda _: None)


def test_every_shipped_adapter_attaches_to_the_shipped_codec_it_names(monkeypatch):
    """Retraining a codec without its adapters would leave adapters for weights that no longer
    ship: every shipped codec must load (weights match the card's sha256) and every shipped
    adapter must attach to the very weights shipped under its codec id."""
    from ttft_archive.adapters.zoo.adapter_store import list_adapters
    from ttft_archive.flows.jobs.codec_setup import attach_stored_adapter

    monkeypatch.delenv("TTFT_ZOO_PATH", raising=False)
    monkeypatch.setenv("TTFT_ADAPTER_PATH", "")  # only the shipped store
    codecs = {e.codec_id: e for e in zoo.list_codecs()}
    assert {"rgb", "gray16"} <= {e.card["family"] for e in codecs.values()}
    loaded = {codec_id: zoo.load_codec(entry) for codec_id, entry in codecs.items()}
    adapters = list_adapters()
    assert adapters
    for entry, card in adapters:
        assert card["codec"] in codecs, f"{entry.adapter_id} names no shipped codec"
        attach_stored_adapter(copy.deepcopy(loaded[card["codec"]]), card["codec"], entry.adapter_id)


def test_a_backbone_preference_falls_back_where_a_family_does_not_ship_it(zoo_dir):
    from ttft_archive.configs import load_settings
    from ttft_archive.flows.jobs.codec_setup import resolve_codec_name

    for name, backbone, family, channels in (
        ("c-rgb-q3", "hyperprior", "rgb", 3),
        ("c-rgb-tic-q3", "tic", "rgb", 3),
        ("c-gray-q3", "hyperprior", "gray16", 1),
    ):
        zoo.save_codec(zoo_dir, name, build(tiny_config(backbone, channels)), {"family": family, "lambda": 0.01})
    prefers_tic = load_settings(codec={"backbone": "tic"})
    assert resolve_codec_name(prefers_tic, None, None, 3) == "c-rgb-tic-q3"
    # gray16 ships no TIC codec: its default backbone, not an untrained codec
    assert resolve_codec_name(prefers_tic, None, None, 1) == "c-gray-q3"
    assert resolve_codec_name(prefers_tic, None, "3", 1) == "c-gray-q3"
    assert resolve_codec_name(load_settings(), None, "3", 3) == "c-rgb-q3"
    from ttft_archive.flows.evaluation.evaluate import rate_point_codecs  # what `ttft eval` codes with

    assert rate_point_codecs(["rgb", "gray16"], "tic") == [["c-rgb-tic-q3", "c-gray-q3"]]
