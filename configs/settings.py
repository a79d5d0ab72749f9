"""Every setting a user can choose, with its default, validated at the edge (CLI, YAML presets,
TTFT_* environment variables) and turned into the plain dataclasses that ttft_core takes."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ttft_core import LoRAConfig, TTFTConfig, TTFTError

PRESETS = Path(__file__).parent / "presets"


class LoRASettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(4, ge=1, le=64)
    alpha: float = Field(8.0, gt=0)

    def to_core(self) -> LoRAConfig:
        return LoRAConfig(rank=self.rank, alpha=self.alpha)


class TTFTSettings(BaseModel):
    """The paper's schedule: 40 Adam steps at 5e-3, halved at steps 15, 25, 30 and 35."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(40, ge=0, le=10_000)
    lr: float = Field(5e-3, gt=0)
    milestones: list[int] = [15, 25, 30, 35]
    gamma: float = Field(0.5, gt=0, le=1)
    # weight of the task loss against bits per pixel; None: the codec's own trade-off
    # (its training lambda * 255^2, the weight CompressAI puts on MSE)
    lmbda: float | None = Field(None, ge=0)
    patience: int | None = Field(None, ge=1)

    def to_core(self, codec_lambda: float | None = None) -> TTFTConfig:
        lmbda = self.lmbda if self.lmbda is not None else (codec_lambda or 0.0067) * 255**2
        return TTFTConfig(steps=self.steps, lr=self.lr, milestones=tuple(self.milestones),
                          gamma=self.gamma, lmbda=lmbda, patience=self.patience)  # fmt: skip


class CodecSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    codec: str | None = None  # a shipped codec id or a backbone size; None: the family's best
    family: str = "rgb"
    s_step: float = Field(1.0 / 64, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TTFT_", env_nested_delimiter="__", extra="forbid")
    codec: CodecSettings = CodecSettings()
    lora: LoRASettings = LoRASettings()
    ttft: TTFTSettings = TTFTSettings()


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
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TTFTError(f"setting {where}: {first['msg']} ({preset or 'defaults'})") from None
