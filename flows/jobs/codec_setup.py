"""Choosing and preparing the codec a job uses: shipped id, family + quality, or a backbone size."""

from __future__ import annotations

import platform

import torch

from ttft_archive.adapters.zoo import codec_for_quality, default_codec_id, open_codec
from ttft_archive.adapters.zoo.adapter_store import adapter_id, find_adapter, require_adapter
from ttft_archive.configs import Settings, load_settings, resolve_device
from ttft_archive.flows.jobs.task_catalog import known_tasks, lambda_scale
from ttft_archive.ttft_core import LoRAConfig, TileCodec, TTFTConfig, TTFTError, attach_adapter
from ttft_archive.ttft_core.digest import base_weights, tensors_digest

ZERO_ADAPTER = "zero"  # no stage-1 adapter: one at zero that both sides rebuild from its seed


def channels_for(codec: str | None, bands: int) -> int:
    """How many bands a codec codes at once: a shipped codec's card says; otherwise groups of three
    (RGB) when the bands split that way, else one band at a time (the gray16 family)."""
    from ttft_archive.adapters.zoo import list_codecs

    cards = {e.codec_id: e.card for e in list_codecs()}
    if codec in cards:
        return int(cards[codec]["backbone"]["channels"])
    return 3 if bands % 3 == 0 else 1


def job_settings(
    preset: str | None, ttft_steps: int, adapter_from: str | None = None, device: str | None = None, **sections
) -> Settings:
    """An ingest's settings, the same in the planner and in every worker: the preset, the TTFT step
    budget, the open-set start (``adapter_from``: the task whose stage-1 adapter a task without
    its own starts from) and where TTFT runs (``device``; None: the settings' ttft.device)."""
    adapter = {"adapter": {"from_task": adapter_from}} if adapter_from else {}
    ttft = {"steps": ttft_steps} | ({"device": device} if device else {})
    return load_settings(preset, ttft=ttft, **adapter, **sections)


def ttft_steps_or_default(ttft_steps: int | None, preset: str | None = None) -> int:
    """The TTFT steps a job runs: as asked, or the settings' ``ttft.steps`` (40 unless a preset or
    TTFT_TTFT__STEPS says otherwise) when none are asked for; 0 turns tuning off."""
    return load_settings(preset).ttft.steps if ttft_steps is None else ttft_steps


def device_for(device: str | None) -> torch.device:
    """``device`` (auto, cpu, cuda, cuda:N) checked and resolved; None: the settings' ttft.device."""
    return torch.device(resolve_device(device or load_settings().ttft.device))


def machine(device: torch.device) -> str:
    """What a card says a model was trained on."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} GPU"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def resolve_codec_name(settings: Settings, codec: str | None, quality: int | None, channels: int) -> str:
    family = settings.codec.family if channels == 3 else "gray16"
    backbone = settings.codec.backbone
    if quality is not None:
        return codec_for_quality(family, quality, backbone)
    return codec or settings.codec.codec or default_codec_id(family, backbone) or "hyperprior-small"


def prepare(
    settings: Settings, name: str, channels: int, ttft_steps: int, task: str | None = None
) -> tuple[TileCodec, TTFTConfig | None, dict | None]:
    """The TileCodec with the adapter ``choose_adapter`` picks for ``task``, its TTFT config and the
    codec card."""
    model, codec_id, card = open_codec(name, channels=channels)
    if model.config.channels != channels:
        raise TTFTError(f"codec {codec_id!r} codes {model.config.channels} channels, the data has {channels}")
    adapter = choose_adapter(settings, codec_id, task, ttft_steps)
    if adapter == ZERO_ADAPTER:
        attach_adapter(model, config=settings.lora.to_core())
    elif adapter:
        attach_stored_adapter(model, codec_id, adapter)
    codec = TileCodec(model, codec_id, adapter, s_step=settings.codec.s_step)
    codec_lambda = card["lambda"] if card else None
    ttft = settings.ttft.to_core(codec_lambda, lambda_scale(task) if task else 1.0) if ttft_steps else None
    return codec, ttft, card


def choose_adapter(settings: Settings, codec_id: str, task: str | None, ttft_steps: int) -> str | None:
    """The task's own stage-1 adapter for this codec (closed set); else, when settings name one, the
    adapter of another task (open set: TTFT adapts it to this task); else the zero adapter when TTFT
    runs; else none. A codec without the open-set task's adapter falls back like a plain task."""
    if task and settings.adapter.stage1 and find_adapter(adapter_id(codec_id, task)):
        return adapter_id(codec_id, task)
    start = settings.adapter.from_task
    if start and start not in known_tasks():
        raise TTFTError(f"adapter.from_task {start!r} is not a task; known: {', '.join(known_tasks())}")
    if start and find_adapter(adapter_id(codec_id, start)):
        return adapter_id(codec_id, start)
    return ZERO_ADAPTER if ttft_steps else None


def attach_stored_adapter(model, codec_id: str, adapter: str, sha256: str | None = None) -> dict:
    """Attach a stage-1 adapter from the store (with ``sha256``: exactly that one) to ``model``,
    after checking that it was trained on these very codec weights. Returns its card."""
    state, adapter_card = require_adapter(adapter, sha256).load()
    model.update(force=False)  # an untrained codec gets its tables here, as TileCodec would
    here = tensors_digest(base_weights(model)).hex()
    if adapter_card.get("codec") != codec_id or adapter_card.get("codec_sha256") != here:
        raise TTFTError(
            f"adapter {adapter!r} was trained on codec {adapter_card.get('codec')!r} "
            f"({str(adapter_card.get('codec_sha256', ''))[:12]}), not on {codec_id!r} ({here[:12]}) here"
        )
    lora_card = adapter_card.get("lora", {})
    config = LoRAConfig(rank=int(lora_card.get("rank", 4)), alpha=float(lora_card.get("alpha", 8.0)))
    attach_adapter(model, state, config=config)
    return adapter_card
