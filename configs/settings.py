"""Every setting a user can choose, with its default, validated at the edge (CLI, YAML presets,
TTFT_* environment variables) and turned into the plain dataclasses that ttft_core takes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ttft_archive.ttft_core import LoRAConfig, TTFTConfig, TTFTError
from ttft_archive.ttft_core.backbones import SPATIAL_MULTIPLE
from ttft_archive.ttft_core.training import DEFAULT_LAMBDA, task_weight

PRESETS = Path(__file__).parent / "presets"
# tile sides an ingest accepts: below, the codec's padding outweighs the tile; above, one tile's
# TTFT no longer fits a GPU. Every codec downsamples by SPATIAL_MULTIPLE (64) in all: a side that
# is not a multiple of it is padded by edge replication to the next one (the bitstream records
# the padded size, the decoder crops it away), which codes the padding too; multiples of 64 waste
# nothing, and the largest tile is one.
MIN_TILE, MAX_TILE = 32, 4096
# the tile side of a new item when an ingest names none. Each tile brings its own header (about
# 130 bytes) and hyper-latents: on a CT slice (usually 512x512, queried whole) four tiles of 256
# cost 23 points of BD-rate against JPEG 2000 that one tile of 512 does not, and on 1024x1024
# Landsat windows tiles of 256 cost 16 points more than tiles of 512 (docs/evaluation.md, through
# the archive). 512 is also the block of the GeoTIFFs a query writes.
RASTER_TILE, DICOM_TILE = 512, 512
assert MAX_TILE % SPATIAL_MULTIPLE == 0 and MAX_TILE < 2**16


def resolve_device(value: str) -> str:
    """Where TTFT (or training) runs: ``auto`` is cuda where torch sees a GPU, else cpu; cpu, cuda
    and cuda:N stand as they are once checked. A GPU asked for where there is none is refused
    here, in one line, rather than halfway through an ingest."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise TTFTError(f"device {value!r}: expected auto, cpu, cuda or cuda:N")
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(value.partition(":")[2] or 0) >= count:
            raise TTFTError(
                f"device {value!r}: this machine has {count or 'no'} CUDA device{'' if count == 1 else 's'}"
            )
    return value


def _checked_device(value: str) -> str:
    try:
        resolve_device(value)
    except TTFTError as exc:
        raise ValueError(str(exc)) from None
    return value


class LoRASettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(LoRAConfig.rank, ge=1, le=64)
    alpha: float = Field(LoRAConfig.alpha, gt=0)

    def to_core(self) -> LoRAConfig:
        return LoRAConfig(rank=self.rank, alpha=self.alpha)


class TTFTSettings(BaseModel):
    """The paper's schedule (40 Adam steps at 5e-3, halved at steps 15, 25, 30 and 35), then as many
    steps refining the tile's latents (beyond the paper)."""

    model_config = ConfigDict(extra="forbid")
    # the core's defaults (ttft_core.TTFTConfig) are the settings' defaults
    steps: int = Field(TTFTConfig.steps, ge=0, le=10_000)
    lr: float = Field(TTFTConfig.lr, gt=0)
    milestones: list[int] = list(TTFTConfig.milestones)
    gamma: float = Field(TTFTConfig.gamma, gt=0, le=1)
    # weight of the task loss against bits per pixel; None: the codec's own trade-off (its
    # training lambda * 255^2, the weight CompressAI puts on MSE) times the task's lambda_scale
    lmbda: float | None = Field(None, ge=0)
    patience: int | None = Field(TTFTConfig.patience, ge=1)
    # start a tile from the bare codec (every adapter s at zero) when that codes it cheaper
    base_start: bool = TTFTConfig.base_start
    # beyond the paper: then refine the tile's latents themselves for this many steps; None: as many
    # as ``steps``, 0: the paper's method alone (preset ``paper``)
    latent_steps: int | None = Field(None, ge=0, le=10_000)
    latent_lr: float = Field(TTFTConfig.latent_lr, gt=0)
    # how the latent steps round the latents: ste (straight through, as the adapter steps) or sga
    # (stochastic Gumbel annealing)
    latent_rounding: Literal["ste", "sga"] = TTFTConfig.latent_rounding
    # the seed of the training noise (mixed quantisation) every tile's TTFT draws: the same source
    # and settings code to the same bytes on every run, batched or not; None: fresh noise each time
    seed: int | None = 0
    # an ingest tunes tiles together, one forward/backward pass per step for as many tiles as fit
    # in this many pixels (1 tile at 256x256, 4 at 128, 16 at 64); it pays where tiles are small
    # and per-step overhead dominates, not on a CPU at 256x256 (docs/method.md, batching).
    # The tuned bytes agree with one-by-one tuning within float rounding; 0: one by one
    batch_pixels: int = Field(65_536, ge=0)
    # where the tuning runs: auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N.
    # Tiles are coded on the CPU either way and decode bit-exactly on any CPU; tuned on a GPU they
    # are not byte-identical to the CPU's (float arithmetic differs), nor is that promised
    device: str = "auto"
    # the batch budget in pixels where the tuning runs on a GPU (32 tiles at 256x256, 512 at 64):
    # a GPU is busy only with many tiles at once
    gpu_batch_pixels: int = Field(2_097_152, ge=0)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return _checked_device(value)

    def batch_budget(self) -> int:
        """The pixels an ingest tunes together on the device the settings name."""
        return self.batch_pixels if resolve_device(self.device) == "cpu" else self.gpu_batch_pixels

    def to_core(self, codec_lambda: float | None = None, lambda_scale: float = 1.0) -> TTFTConfig:
        """``lambda_scale``: the task's share of the codec's trade-off (Task.lambda_scale); a
        ``lmbda`` set here is the task loss's weight as it stands."""
        lmbda = self.lmbda if self.lmbda is not None else task_weight(codec_lambda or DEFAULT_LAMBDA, lambda_scale)
        return TTFTConfig(
            steps=self.steps,
            lr=self.lr,
            milestones=tuple(self.milestones),
            gamma=self.gamma,
            lmbda=lmbda,
            patience=self.patience,
            base_start=self.base_start,
            latent_steps=self.steps if self.latent_steps is None else self.latent_steps,
            latent_lr=self.latent_lr,
            latent_rounding=self.latent_rounding,
            seed=self.seed,
            device=resolve_device(self.device),
        )


DICOM_FAMILIES = {"CT": "gray16", "*": "gray16med"}


class CodecSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    codec: str | None = None  # a shipped codec id or a backbone size; None: the family's best
    family: str = "rgb"
    backbone: str = "hyperprior"  # whose rate points --quality and the default codec pick (rasters)
    # the same for DICOM series: the checkerboard context saves CT about 8 points of BD-rate
    # (docs/training.md, "The checkerboard points"); a family without its points keeps the hyperprior's
    dicom_backbone: str = "checkerboard"
    s_step: float = Field(1.0 / 64, gt=0)
    # "tile": each tile coded in its own value window (ttft_core.value_window); "item": in the
    # item's mapping; None: the codec family's choice (FAMILY_WINDOWS)
    window: Literal["tile", "item"] | None = None
    # with windows and tuning: "item", one task-loss weight for all of an item's tiles (one
    # trade-off in the item's values, value_window.shared_weight); "tile", each tile's own window's
    trade_off: Literal["item", "tile"] = "item"
    # the one-channel family a DICOM series is coded with, by its Modality ("*": any other). CT
    # keeps the family trained for it; MR and radiographs take gray16med, which the wider medical
    # set trained further (docs/evaluation.md, "Other DICOM modalities")
    dicom_families: dict[str, str] = Field(default_factory=lambda: dict(DICOM_FAMILIES))

    @field_validator("dicom_families")
    @classmethod
    def _any_other_modality(cls, value: dict[str, str]) -> dict[str, str]:
        if "*" not in value:
            raise ValueError(f"{value}: name the family of any other modality under '*'")
        return {k.upper(): v for k, v in value.items()}


# the families whose tiles are coded in their own value window unless settings say otherwise
# (measured in docs/evaluation.md, "Value windows": rgb gains, gray16 loses)
FAMILY_WINDOWS = {"rgb": "tile", "gray16": "item", "gray16med": "item"}


def windowed(choice: str | None, family: str | None) -> bool:
    """Whether tiles are coded in their own value window: as ``choice`` says, else as the codec's
    family does (a codec of no family, an untrained one, in the item's mapping)."""
    return (choice or FAMILY_WINDOWS.get(family, "item")) == "tile"


class IngestOptions(BaseModel):
    """What one ingest codes and how. The `ttft ingest` options, the jobs' and the Prefect flows'
    parameters and the inbox settings are these fields, with these defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    task: str = Field("pixel", description="the task profile: what TTFT optimises and the archive keeps (`ttft tasks`)")
    codec: str | None = Field(None, description="a shipped codec id or a backbone size; None: the family's best")
    quality: str | None = Field(
        None,
        pattern=r"^\d+$",
        description="the family's rate point instead of a codec, as its codec id names it: 3 picks "
        "<family>-<backbone>-q3 (rgb: CompressAI's quality levels, 0 below them; gray16: 00, 0 to 6, "
        "5 and 6 being opt-in points up to about 1 bpp on CT)",
    )
    ttft_steps: int | None = Field(
        None,
        ge=0,
        le=10_000,
        description="TTFT steps per tile, then as many refining its latents; None: the settings' ttft.steps "
        "(40); 0: no tuning",
    )
    tile: int | None = Field(
        None,
        ge=MIN_TILE,
        le=MAX_TILE,
        description=f"tile side in pixels; None: the item's own where the archive holds it, else {RASTER_TILE} "
        f"for a raster and {DICOM_TILE} for a DICOM series (one tile for a 512x512 slice)",
    )
    bands: list[list[int]] | None = Field(
        None,
        description="raster band groups, 1-based: '1,2,3;4' codes RGB with the rgb codec and band 4 with a gray16 "
        "codec; None: groups of 3 when they fit, else single bands",
    )
    band_names: dict[str, int] | None = Field(
        None,
        description="the bands a cross-band task (ndvi, ndwi, water, vegetation) reads, 1-based: "
        "'red=1,green=2,blue=3,nir=4'; None: blue, green, red, nir = 1..4",
    )
    window: Literal["tile", "item"] | None = Field(
        None,
        description="tile: each tile coded in its own value range stretched to [0, 1]; item: in the item's "
        "mapping; None: the settings' codec.window, else the family's choice (rgb: tile, gray16: item)",
    )
    trade_off: Literal["item", "tile"] | None = Field(
        None,
        description="with value windows and tuning, a raster's rate-fidelity trade-off: item: one for all its tiles, "
        "judged in the item's values; tile: each tile's own, as in its stretched values; None: the settings' "
        "codec.trade_off (item), or the one the item's profile was coded with",
    )
    adapter_from: str | None = Field(
        None, description="a task without its own stage-1 adapter starts TTFT from this task's (open set)"
    )
    preset: str | None = Field(None, description="a settings preset (satellite, ct, ...) or a YAML file")
    device: str | None = Field(
        None, description="where TTFT runs: auto, cpu, cuda or cuda:N; None: the settings' ttft.device (auto)"
    )

    @field_validator("quality", mode="before")
    @classmethod
    def _quality_as_text(cls, value):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("tile", mode="before")
    @classmethod
    def _tile_side(cls, value):
        if isinstance(value, int) and not isinstance(value, bool) and not MIN_TILE <= value <= MAX_TILE:
            raise ValueError(
                f"{value} is not a tile side: {MIN_TILE} to {MAX_TILE} pixels (a side that is not a multiple "
                f"of {SPATIAL_MULTIPLE}, the codecs' stride, is padded to the next one)"
            )
        return value

    @field_validator("bands", mode="before")
    @classmethod
    def _band_groups_from_text(cls, value):
        if isinstance(value, str):
            try:
                return [[int(b) for b in group.split(",")] for group in value.split(";")] if value else None
            except ValueError:
                raise ValueError(f"{value!r}: expected groups of 1-based band numbers, e.g. 1,2,3;4") from None
        return value

    @field_validator("band_names", mode="before")
    @classmethod
    def _band_names_from_text(cls, value):
        if isinstance(value, str):
            try:
                pairs = (pair.split("=") for pair in value.split(",")) if value else ()
                return {name.strip(): int(band) for name, band in pairs} or None
            except ValueError:
                raise ValueError(f"{value!r}: expected name=band pairs, e.g. red=1,green=2,blue=3,nir=4") from None
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        return None if value is None else _checked_device(value)

    @classmethod
    def of(cls, options: IngestOptions | None = None, **fields) -> IngestOptions:
        """``options`` with ``fields`` over them, checked: a bad value is one TTFTError line."""
        try:
            return cls(**((options.model_dump() if options else {}) | fields))
        except ValidationError as exc:
            raise TTFTError(_first_error(exc, "ingest option")) from None

    def with_steps(self) -> IngestOptions:
        """The same with ``ttft_steps`` settled: as asked, or the settings' ttft.steps."""
        if self.ttft_steps is not None:
            return self
        return self.model_copy(update={"ttft_steps": load_settings(self.preset).ttft.steps})


class InboxSettings(IngestOptions):
    """What the scheduled inbox ingestion watches, and how it codes what it finds there (the
    ingest options)."""

    model_config = ConfigDict(extra="forbid", frozen=False)
    path: str | None = None  # a folder or an s3://bucket/prefix; None: the inbox deployment has no schedule
    cron: str = "*/15 * * * *"
    timezone: str = "UTC"

    def options(self) -> IngestOptions:
        return IngestOptions(**self.model_dump(include=set(IngestOptions.model_fields)))

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        # why here: a bad cron would otherwise surface only when Prefect's scheduler first reads it
        if len(value.split()) != 5:
            raise ValueError(f"expected a cron expression of 5 fields (minute hour day month weekday), got {value!r}")
        return value


class ServeSettings(BaseModel):
    """The deployments `ttft serve` and infra/prefect.yaml define (flows/orchestration/deployments.py)."""

    model_config = ConfigDict(extra="forbid")
    archive: str = "archive.zarr"  # a local folder or s3://bucket/prefix every deployment writes to and reads from
    inbox: InboxSettings = InboxSettings()


class AdapterSettings(BaseModel):
    """Which stage-1 adapter a profile's codec starts from (the store: `ttft adapters`)."""

    model_config = ConfigDict(extra="forbid")
    # the task's own adapter for the codec, when the store has one (the closed-set case)
    stage1: bool = True
    # a task without one starts from this task's adapter for the same codec (open set); a codec
    # with neither gets the zero adapter when TTFT runs
    from_task: str | None = None


class RasterSettings(BaseModel):
    """What a cross-band task (ndvi, ndwi, water, vegetation) needs to know of a raster's bands."""

    model_config = ConfigDict(extra="forbid")
    # band name -> 1-based band number, e.g. {red: 1, green: 2, blue: 3, nir: 4}; None: blue, green,
    # red, nir as bands 1 to 4
    band_names: dict[str, int] | None = None

    def task_bands(self) -> dict[str, int] | None:
        """The 0-based channel mapping the tasks take."""
        return {name: band - 1 for name, band in self.band_names.items()} if self.band_names else None


class LimitsSettings(BaseModel):
    """The largest source an ingest takes, checked from its header before any pixel is read: a
    header may declare far more than its file holds (150 bytes of TIFF can claim 10^12 pixels), and
    planning reads every pixel once. Generous but finite; raise them in a preset or with
    TTFT_LIMITS__MAX_PIXELS and the like."""

    model_config = ConfigDict(extra="forbid")
    max_pixels: int = Field(10_000_000_000, ge=1)  # width x height of a raster, rows x columns of a slice
    max_bands: int = Field(1024, ge=1)  # bands of a raster
    max_slices: int = Field(100_000, ge=1)  # slices (images, frames) of a DICOM series
    max_samples: int = Field(20_000_000_000, ge=1)  # pixels x bands, or pixels x slices

    def check_raster(self, source: str, width: int, height: int, bands: int) -> None:
        """TTFTError naming the source and the limit when a raster's header declares too much."""
        self._check(source, f"{width} x {height} pixels", width * height, "max_pixels")
        self._check(source, f"{bands} bands", bands, "max_bands")
        self._check(source, f"{width} x {height} x {bands} samples", width * height * bands, "max_samples")

    def check_series(self, source: str, rows: int, cols: int, slices: int) -> None:
        """The same for a DICOM series (``source``: its files or its SeriesInstanceUID)."""
        self._check(source, f"slices of {rows} x {cols} pixels", rows * cols, "max_pixels")
        self._check(source, f"{slices} slices", slices, "max_slices")
        self._check(source, f"{slices} x {rows} x {cols} samples", rows * cols * slices, "max_samples")

    def _check(self, source: str, what: str, value: int, limit: str) -> None:
        if value > getattr(self, limit):
            raise TTFTError(
                f"{source}: {what} exceed limits.{limit} ({getattr(self, limit):,}), refused before "
                f"reading any pixel (raise the limit in a preset or with TTFT_LIMITS__{limit.upper()})"
            )


class OrchestrationSettings(BaseModel):
    """How the Prefect flows run their tile tasks (the plain `ttft ingest` codes tiles in order)."""

    model_config = ConfigDict(extra="forbid")
    runner: Literal["threads", "dask"] = "threads"
    workers: int = Field(1, ge=1, le=256)  # threads, or local Dask worker processes
    dask_address: str | None = None  # a running Dask scheduler (tcp://host:8786); None: a local cluster
    # the global concurrency limit held around each tile's TTFT step, created with `slots` when
    # missing; one limit per GPU keeps several workers from crowding it
    ttft_limit: str = "gpu"
    ttft_slots: int = Field(1, ge=1)
    tile_retries: int = Field(2, ge=0, le=10)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TTFT_", env_nested_delimiter="__", extra="forbid")
    codec: CodecSettings = CodecSettings()
    lora: LoRASettings = LoRASettings()
    ttft: TTFTSettings = TTFTSettings()
    adapter: AdapterSettings = AdapterSettings()
    serve: ServeSettings = ServeSettings()
    orchestration: OrchestrationSettings = OrchestrationSettings()
    raster: RasterSettings = RasterSettings()
    limits: LimitsSettings = LimitsSettings()


def load_settings(preset: str | None = None, **overrides) -> Settings:
    """Defaults, then a named preset (configs/presets/NAME.yaml) or a YAML path, then overrides."""
    data: dict = {}
    if preset:
        path = PRESETS / f"{preset}.yaml" if (PRESETS / f"{preset}.yaml").exists() else Path(preset)
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
            raise TTFTError(f"unknown preset {preset!r}; known: {known}, or a path to a YAML file")
        data = yaml.safe_load(path.read_text()) or {}
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise TTFTError(f"{_first_error(exc, 'setting')} ({preset or 'defaults'})") from None


def _first_error(exc: ValidationError, what: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{what} {where}: {first['msg'].removeprefix('Value error, ')}"
