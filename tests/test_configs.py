import pytest

from ttft_archive.configs import load_settings
from ttft_archive.ttft_core import TTFTError


def test_defaults_follow_the_paper_and_presets_override_them():
    s = load_settings()
    core = s.ttft.to_core()
    assert (core.steps, core.lr, core.milestones, core.gamma) == (40, 5e-3, (15, 25, 30, 35), 0.5)
    assert (s.lora.rank, s.lora.alpha) == (4, 8.0)
    assert load_settings("ct").codec.family == "gray16"
    assert load_settings("satellite", ttft={"steps": 7}).ttft.steps == 7


def test_bad_settings_are_one_line_user_errors(tmp_path):
    with pytest.raises(TTFTError, match="ttft.steps"):
        load_settings(ttft={"steps": -1})
    with pytest.raises(TTFTError, match="unknown preset 'nope'"):
        load_settings("nope")
    typo = tmp_path / "typo.yaml"
    typo.write_text("ttft:\n  stpes: 3\n")
    with pytest.raises(TTFTError, match="ttft.stpes"):
        load_settings(str(typo))


def test_the_value_window_is_the_familys_unless_an_option_or_setting_names_it():
    from ttft_archive.configs import IngestOptions
    from ttft_archive.flows.jobs.codec_setup import job_settings, task_coder

    def windowed(options: IngestOptions, codec: str) -> bool:
        settings = job_settings(options)
        return task_coder(settings, codec, 3 if codec.startswith("rgb") else 1, "pixel").windowed

    assert windowed(IngestOptions(), "rgb-hyperprior-q1") and not windowed(IngestOptions(), "gray16-hyperprior-q1")
    assert not windowed(IngestOptions(window="item"), "rgb-hyperprior-q1")
    assert windowed(IngestOptions(window="tile"), "gray16-hyperprior-q1")
    assert not windowed(IngestOptions(), "hyperprior-small")  # no family: the item's mapping
    assert load_settings(codec={"window": "item"}).codec.window == "item"
    with pytest.raises(TTFTError, match="codec.window"):
        load_settings(codec={"window": "scene"})
    with pytest.raises(ValueError, match="window"):
        IngestOptions(window="scene")
