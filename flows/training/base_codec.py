"""Training a base codec as a resumable job: checkpoints every few minutes, carries on from the
last one when started again, and exports safetensors + card only when the last step is done.

The steps run on ``device`` (a GPU when the settings say auto and there is one); a checkpoint is
read onto the CPU, so a run may go on on another machine, and the export is built on the CPU.
On a GPU the training noise comes from the GPU's generator, which a checkpoint does not keep: a
resumed run is then not the uninterrupted one step for step."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ttft_archive.adapters.atomic import write_bytes_atomic
from ttft_archive.adapters.crops import LEVEL_GAIN_MIN, CropSampler, levels_note
from ttft_archive.adapters.training_sets import open_training_set
from ttft_archive.adapters.zoo import find_codec, load_codec, read_checkpoint, save_codec
from ttft_archive.flows.jobs.codec_setup import device_for, machine
from ttft_archive.ttft_core import TTFTError, build, preset
from ttft_archive.ttft_core.backbones import MeanScaleCodec, grow_from_hyperprior, widen
from ttft_archive.ttft_core.training import BaseTrainConfig, BaseTrainer, train_context_only


class TrainBaseJob(BaseModel):
    """A base codec's training run: the `ttft train-base` options and the train-base-codec flow's
    parameters, with these defaults."""

    model_config = ConfigDict(extra="forbid")
    codec_id: str = Field(description="the id the finished codec is exported under")
    data: list[str] = Field(description="folders or files of training images")
    run_dir: str = Field("", description="checkpoints and logs; empty: runs/<codec_id>")
    size: str = Field("hyperprior-small", description="the backbone size (`ttft codecs`)")
    family: str = Field("rgb", description="the family whose rate points the codec joins (its card)")
    modality: str = Field(
        "rgb8",
        description="rgb8 (PNG/JPEG folders), rgb-rasters (those and 16-bit GeoTIFFs by three bands), ct (DICOM "
        "folders) or gray16 (DICOM, 16-bit GeoTIFF and 8-bit image files or folders: CT slices, single raster "
        "bands, photographs as luma)",
    )
    lmbda: float = Field(BaseTrainConfig.lmbda, gt=0, description="rate-distortion trade-off (CompressAI's)")
    steps: int = Field(BaseTrainConfig.total_steps, ge=1, description="training steps")
    batch: int = Field(8, ge=1, description="crops per step")
    crop: int = Field(128, ge=16, description="crop side in pixels")
    lr: float = Field(BaseTrainConfig.lr, gt=0, description="learning rate")
    seed: int = Field(0, description="seed of the crops and the initial weights")
    levels: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of one-channel crops level-augmented (negatives and random windows of [0, 1]); 0: none",
    )
    level_gain_min: float = Field(
        LEVEL_GAIN_MIN,
        gt=0,
        le=1,
        description="with --levels, the narrowest random window of a leveled crop (its gain; 1: levels only)",
    )
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    init_from: str = Field(
        "",
        description="start from a shipped codec's weights (another rate point; a checkerboard codec may start from "
        "the hyperprior of its size, its context then coding as the hyperprior alone until trained; a wider "
        "hyperprior, --size hyperprior, from a narrower one, widened: coding as it does until trained)",
    )
    init_gain: float = Field(
        1.0,
        gt=0,
        description="scale --init-from's latents by this gain before training: a finer coding step, for a rate "
        "point above it (gray16 q4 doubled codes CT at about 1.7 times its rate)",
    )
    train: Literal["all", "context"] = Field(
        "all", description="all weights, or only a checkerboard codec's context (the rest frozen as --init-from has it)"
    )
    opt_in: bool = Field(
        False,
        description="the card marks the point opt-in: --quality or --codec picks it, never the family's default",
    )
    log_every: int = Field(100, ge=1, description="steps between log lines")
    export_to: str = Field("", description="folder for the finished safetensors + card; empty: no export")
    command: str = Field("", description="what started the run, for the card")
    device: str | None = Field(
        None, description="where training runs: auto, cpu, cuda or cuda:N; None: the settings' ttft.device"
    )

    @property
    def run_folder(self) -> Path:
        return Path(self.run_dir or f"runs/{self.codec_id}")


CONTEXT_ONLY_NOTE = "the checkerboard context only; transforms, hyperprior and bottleneck frozen as in init_from"


def load_start_weights(model: MeanScaleCodec, start: MeanScaleCodec, job: TrainBaseJob) -> None:
    """``start``'s weights into ``model``: the same architecture, a checkerboard codec growing
    from the hyperprior of its size (its context is then the only thing left as built), or a
    wider hyperprior codec widened from it (coding as it does until trained)."""
    if start.config == model.config:
        model.load_state_dict(start.state_dict())
        return
    for grow in (grow_from_hyperprior, widen):
        try:
            return grow(model, start)
        except TTFTError:
            pass
    raise TTFTError(f"--init-from {job.init_from}: its architecture differs from --size {job.size}")


def run(job: TrainBaseJob, log=print) -> Path | None:
    run_dir = job.run_folder
    run_dir.mkdir(parents=True, exist_ok=True)
    device = device_for(job.device)
    torch.manual_seed(job.seed)
    data = open_training_set(job.modality, job.data)
    model = build(preset(job.size, data.channels)).to(device)
    if job.train == "context":
        train_context_only(model)
    trainer = BaseTrainer(model, BaseTrainConfig(lmbda=job.lmbda, lr=job.lr, total_steps=job.steps))
    if job.init_gain != 1.0 and not job.init_from:
        raise TTFTError("--init-gain scales the latents of --init-from's weights: name them with --init-from")
    if job.levels and data.channels != 1:
        raise TTFTError(f"--levels is for one-channel training sets (gray16, ct), not {job.modality}")
    sampler = CropSampler(
        data.files,
        data.read,
        job.crop,
        job.seed,
        scale=data.scale,
        by_area=data.by_area,
        levels=job.levels,
        gain_min=job.level_gain_min,
    )
    ckpt_path = run_dir / "checkpoint.pt"
    elapsed = 0.0
    # The starting codec's card is kept beside the checkpoint: by export time the zoo may hold
    # another codec of that id, and the new card must say which weights it grew from.
    lineage_path = run_dir / "init_from_card.json"
    if job.init_from and not ckpt_path.exists():
        start = find_codec(job.init_from)
        load_start_weights(model, load_codec(start), job)
        if job.init_gain != 1.0:
            model.scale_latents(job.init_gain)
        write_bytes_atomic(lineage_path, json.dumps(start.card).encode())
        log(f"starting {job.codec_id} from the weights of {job.init_from}")
    if ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        trainer.load_state_dict(ckpt["trainer"])
        sampler.set_state(ckpt["sampler"])
        elapsed = float(ckpt["elapsed"])
        log(f"resuming {job.codec_id} at step {trainer.step} ({elapsed / 60:.1f} min trained)")
    (run_dir / "job.json").write_text(job.model_dump_json(indent=2))
    started = time.perf_counter()
    window: list[dict] = []
    while trainer.step < job.steps:
        window.append(trainer.train_step(sampler.batch(job.batch).to(device)))
        if trainer.step % job.log_every == 0 or trainer.step == job.steps:
            mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            mean.update(
                step=trainer.step, lr=trainer.learning_rate(), minutes=(elapsed + time.perf_counter() - started) / 60
            )
            with open(run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(mean) + "\n")
            log(
                f"{job.codec_id} step {trainer.step}/{job.steps} loss {mean['loss']:.4f} bpp {mean['bpp']:.3f}"
                + (f" psnr {mean['psnr']:.2f}" if "psnr" in mean else "")
            )
            window = []
        if trainer.step % job.checkpoint_every == 0 or trainer.step == job.steps:
            total = elapsed + time.perf_counter() - started
            buf = io.BytesIO()
            torch.save({"trainer": trainer.state_dict(), "sampler": sampler.state(), "elapsed": total}, buf)
            write_bytes_atomic(ckpt_path, buf.getvalue())
    if not job.export_to:
        return None
    card = {
        "family": job.family,
        "lambda": job.lmbda,
        "steps": trainer.step,
        "batch": job.batch,
        "crop": job.crop,
        "wall_seconds": round(elapsed + time.perf_counter() - started, 1),
        "machine": machine(device),
        "normalisation": data.normalisation,
        **({"augmentation": levels_note(job.levels, job.level_gain_min)} if job.levels else {}),
        **({"trained": CONTEXT_ONLY_NOTE} if job.train == "context" else {}),
        **({"opt_in": True} if job.opt_in else {}),
        "init_from": job.init_from or None,
        **({"init_gain": job.init_gain} if job.init_gain != 1.0 else {}),
        "init_from_card": json.loads(lineage_path.read_text()) if job.init_from and lineage_path.exists() else None,
        "train_files": [str(f) for f in data.files],
        "command": job.command,
    }
    return save_codec(job.export_to, job.codec_id, model.cpu(), card)
