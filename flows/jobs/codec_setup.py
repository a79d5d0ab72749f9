"""Choosing and preparing the codec a job uses: shipped id, family + quality, or a backbone size."""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace

import torch

from ttft_archive.adapters.zoo import (
    DEFAULT_BACKBONE,
    codec_for_quality,
    default_codec_id,
    describe_codec,
    family_rate_points,
    open_codec,
    quality_of,
    shipped_backbone,
)
from ttft_archive.adapters.zoo.adapter_store import adapter_id, find_adapter, require_adapter
from ttft_archive.configs import IngestOptions, Settings, load_settings, resolve_device
from ttft_archive.configs.settings import windowed
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


def job_settings(options: IngestOptions, default_preset: str | None = None, **sections) -> Settings:
    """An ingest's settings: the preset (``default_preset`` when the options name none), then what
    its options set (the TTFT step budget, the open-set start, where TTFT runs, a cross-band task's
    band names)."""
    ttft = _drop_none({"steps": options.ttft_steps, "device": options.device})
    adapter = {"adapter": {"from_task": options.adapter_from}} if options.adapter_from else {}
    raster = {"raster": {"band_names": options.band_names}} if options.band_names else {}
    codec = {"codec": _drop_none({"window": options.window, "trade_off": options.trade_off})}
    return load_settings(options.preset or default_preset, ttft=ttft, **adapter, **raster, **codec, **sections)


def _drop_none(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def device_for(device: str | None) -> torch.device:
    """``device`` (auto, cpu, cuda, cuda:N) checked and resolved; None: the settings' ttft.device."""
    return torch.device(resolve_device(device or load_settings().ttft.device))


def machine(device: torch.device) -> str:
    """What a card says a model was trained on."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} GPU"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def resolve_codec_name(
    settings: Settings,
    codec: str | None,
    quality: str | None,
    channels: int,
    family: str | None = None,
    backbone: str | None = None,
) -> str:
    """The codec named, else ``family``'s point of ``quality``, else its default; without a
    ``family``, the settings' for three channels and gray16 for one. ``backbone`` (else the
    settings' codec.backbone) is a preference: a family or a quality without a point of it takes
    the hyperprior's (gray16 q6 has no checkerboard point)."""
    family = family or (settings.codec.family if channels == 3 else "gray16")
    backbone = shipped_backbone(family, backbone or settings.codec.backbone)
    if quality is not None:
        if not any(quality_of(e.codec_id) == str(quality) for e in family_rate_points(family, backbone)):
            backbone = DEFAULT_BACKBONE
        return codec_for_quality(family, quality, backbone)
    return codec or settings.codec.codec or default_codec_id(family, backbone) or "hyperprior-small"


def dicom_family(settings: Settings, modality: str) -> str:
    """The one-channel family settings give a DICOM series of this Modality."""
    families = settings.codec.dicom_families
    family = families.get(modality.upper(), families["*"])
    if not family_rate_points(family):
        raise TTFTError(
            f"codec.dicom_families: no shipped codec of family {family!r} (for modality {modality or 'none'!r})"
        )
    return family


@dataclass(frozen=True)
class TaskCoder:
    """How a profile codes tiles of one band-group size for its task, settled once by the planner
    and carried to every worker, which rebuilds exactly this codec from it: the codec (a shipped id
    or a backbone size), its adapter (a stage-1 adapter of the store with its digest, the zero
    adapter of ``lora``'s shape, or none), the TTFT settings with the task's share of the codec's
    trade-off in ``ttft.lmbda`` (None: no tuning), and where TTFT runs (auto, cpu, cuda, cuda:N),
    resolved by each worker on its own machine."""

    task: str
    channels: int
    codec: str
    adapter: str | None
    adapter_sha256: str | None
    lora: LoRAConfig | None
    s_step: float
    ttft: TTFTConfig | None
    device: str
    windowed: bool = False  # each tile coded in its own value window


def task_coder(settings: Settings, name: str, channels: int, task: str | None) -> TaskCoder:
    """The record for ``task`` on codec ``name``: the adapter ``choose_adapter`` picks, the TTFT
    settings of ``settings`` (their steps: 0 turns tuning off) weighted by the task."""
    codec_id, card, codes = describe_codec(name, channels=channels)  # built by `build`, where it runs
    if codes != channels:
        raise TTFTError(f"codec {codec_id!r} codes {codes} channels, the data has {channels}")
    steps = settings.ttft.steps
    adapter = choose_adapter(settings, codec_id, task, steps)
    stored = adapter not in (None, ZERO_ADAPTER)
    sha256 = tensors_digest(require_adapter(adapter).load()[0]).hex() if stored else None
    lora_config = settings.lora.to_core() if adapter == ZERO_ADAPTER else None
    codec_lambda = card["lambda"] if card else None
    ttft = settings.ttft.to_core(codec_lambda, lambda_scale(task) if task else 1.0) if steps else None
    return TaskCoder(
        task or "pixel",
        channels,
        name,
        adapter,
        sha256,
        lora_config,
        settings.codec.s_step,
        ttft,
        settings.ttft.device,
        windowed(settings.codec.window, (card or {}).get("family")),
    )


def build(coder: TaskCoder) -> tuple[TileCodec, TTFTConfig | None]:
    """The TileCodec a record names and its TTFT config for this machine's device."""
    model, codec_id, _ = open_codec(coder.codec, channels=coder.channels)
    if coder.adapter == ZERO_ADAPTER:
        attach_adapter(model, config=coder.lora)
    elif coder.adapter:
        attach_stored_adapter(model, codec_id, coder.adapter, coder.adapter_sha256)
    codec = TileCodec(model, codec_id, coder.adapter, s_step=coder.s_step, windowed=coder.windowed)
    ttft = replace(coder.ttft, device=resolve_device(coder.device)) if coder.ttft else None
    return codec, ttft


def prepare(
    settings: Settings, name: str, channels: int, task: str | None = None
) -> tuple[TileCodec, TTFTConfig | None]:
    """The TileCodec and TTFT config of ``task_coder``'s record, built here."""
    return build(task_coder(settings, name, channels, task))


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
