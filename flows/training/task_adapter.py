"""Stage-1 training of a task's adapter as a resumable job (`ttft train-adapter`): checkpoints
atomically, carries on from the last checkpoint when started again, and writes the adapter with
its card into the adapter store only when the last step is done.

A tenth of the data files (at least one) is held out: the card's evaluation compresses a fixed set
of crops from them to real bytes, with the adapter and with the bare codec.

The steps run on ``device`` (a GPU when the settings say auto and there is one); a checkpoint is
read onto the CPU, so a run may go on on another machine, and the evaluation codes on the CPU. On a GPU the training noise comes from the GPU's
generator, which a checkpoint does not keep: a resumed run is then not the uninterrupted one."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from ttft_archive.adapters.adapter_files import save_adapter
from ttft_archive.adapters.atomic import write_bytes_atomic
from ttft_archive.adapters.crops import CropSampler
from ttft_archive.adapters.training_sets import TrainingSet, open_training_set
from ttft_archive.adapters.zoo import open_codec, read_checkpoint
from ttft_archive.adapters.zoo.adapter_store import adapter_id, default_output_folder
from ttft_archive.flows.jobs.codec_setup import channels_for, device_for, machine
from ttft_archive.flows.jobs.task_catalog import get_task
from ttft_archive.ttft_core import LoRAConfig, TileCodec, TTFTError, attach_adapter
from ttft_archive.ttft_core.digest import base_weights, tensors_digest
from ttft_archive.ttft_core.stage1 import Stage1Config, Stage1Trainer, evaluate
from ttft_archive.ttft_core.training import DEFAULT_LAMBDA, task_weight


class TrainAdapterJob(BaseModel):
    """A task's stage-1 adapter training run: the `ttft train-adapter` options and the
    train-task-adapter flow's parameters, with these defaults."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(description="the task the adapter is trained for (`ttft tasks`)")
    codec: str = Field(description="a shipped codec id or a backbone size (an untrained, seeded codec)")
    data: list[str] = Field(description="folders of training images (rgb8) or DICOM files (ct)")
    run_dir: str = Field("", description="checkpoints; empty: runs/adapters/<codec>--<task>")
    out: str = Field(
        "",
        description="the adapter store folder to write to; empty: the first TTFT_ADAPTER_PATH folder, "
        "else ~/.local/share/ttft/adapters",
    )
    modality: str = Field("", description="rgb8 or ct; empty: from the codec's channels (3: rgb8, 1: ct)")
    lmbda: float | None = Field(
        None, gt=0, description="task loss weight; None: the codec's own trade-off, its lambda * 255^2 (as TTFT)"
    )
    steps: int = Field(Stage1Config.total_steps, ge=1, description="training steps")
    batch: int = Field(8, ge=1, description="crops per step")
    crop: int = Field(128, ge=16, description="crop side in pixels")
    lr: float = Field(Stage1Config.lr, gt=0, description="learning rate")
    seed: int = Field(0, description="seed of the crops")
    rank: int = Field(LoRAConfig.rank, ge=1, description="the adapter's rank")
    alpha: float = Field(LoRAConfig.alpha, gt=0, description="the adapter's scale numerator (alpha / rank)")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints")
    log_every: int = Field(50, ge=1, description="steps between log lines")
    eval_crops: int = Field(16, ge=1, description="held-out crops the card's evaluation codes")
    eval_crop: int = Field(
        256, ge=16, description="side of the held-out crops: a tile's, so header bytes weigh as they will"
    )
    command: str = Field("", description="what started the run, for the card")
    device: str | None = Field(
        None, description="where training runs: auto, cpu, cuda or cuda:N; None: the settings' ttft.device"
    )


def held_out(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): every tenth file in sorted order, at least one."""
    if len(files) < 2:
        raise TTFTError(f"stage-1 training needs at least 2 data files (one is held out), found {len(files)}")
    count = max(1, len(files) // 10)
    stride = len(files) // count
    held = set(files[stride // 2 :: stride][:count])
    return [f for f in files if f not in held], sorted(held)


def open_data(job: TrainAdapterJob) -> tuple[TrainingSet, int]:
    if job.modality:
        channels = {"rgb8": 3, "ct": 1}.get(job.modality)
        if channels is None:
            raise TTFTError(f"unknown training modality {job.modality!r}; known: rgb8, ct")
        return open_training_set(job.modality, job.data), channels
    channels = channels_for(job.codec, 3)
    return open_training_set("rgb8" if channels == 3 else "ct", job.data), channels


def run(job: TrainAdapterJob, log=print) -> Path:
    device = device_for(job.device)
    torch.manual_seed(job.seed)  # the noise of training-mode quantisation; checkpoints carry its state on
    task = get_task(job.task)
    data, channels = open_data(job)
    model, codec_id, codec_card = open_codec(job.codec, channels=channels)
    if model.config.channels != channels:
        raise TTFTError(f"codec {codec_id!r} codes {model.config.channels} channels, the data has {channels}")
    model.update(force=False)  # an untrained codec gets its tables now, so its digest is the one TileCodec sees
    codec_sha = tensors_digest(base_weights(model)).hex()
    the_id = adapter_id(codec_id, task.name)
    run_dir = Path(job.run_dir or f"runs/adapters/{the_id}")
    out = Path(job.out) if job.out else default_output_folder()
    lmbda = job.lmbda if job.lmbda is not None else task_weight(codec_card["lambda"] if codec_card else DEFAULT_LAMBDA)
    train_files, eval_files = held_out(data.files)
    lora_config = LoRAConfig(rank=job.rank, alpha=job.alpha)
    attach_adapter(model, config=lora_config)
    model.to(device)  # after update(): the coder's tables were built on the CPU, where coding runs
    trainer = Stage1Trainer(model, task.loss, Stage1Config(lmbda=lmbda, lr=job.lr, total_steps=job.steps))
    sampler = CropSampler(train_files, data.read, job.crop, job.seed, scale=data.scale, by_area=data.by_area)
    elapsed = resume(run_dir, trainer, sampler, codec_sha, the_id, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job.json").write_text(job.model_dump_json(indent=2))
    started = time.perf_counter()
    window: list[dict] = []
    while trainer.step < job.steps:
        window.append(trainer.train_step(sampler.batch(job.batch).to(device)))
        minutes = (elapsed + time.perf_counter() - started) / 60
        if trainer.step % job.log_every == 0 or trainer.step == job.steps:
            mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            mean.update(step=trainer.step, lr=trainer.learning_rate(), minutes=minutes)
            with open(run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(mean) + "\n")
            log(
                f"{the_id} step {trainer.step}/{job.steps} loss {mean['loss']:.4f} bpp {mean['bpp']:.3f} "
                f"task loss {mean['task_loss']:.3g}"
            )
            window = []
        if trainer.step % job.checkpoint_every == 0 or trainer.step == job.steps:
            save_checkpoint(run_dir, trainer, sampler, elapsed + time.perf_counter() - started, codec_sha, the_id)
    wall = elapsed + time.perf_counter() - started
    model.cpu()  # the evaluation codes real bytes, on the CPU
    evaluation = evaluate_adapter(job, data, eval_files, task, model, codec_id, channels)
    log(f"{the_id} held-out crops: adapter {evaluation['adapter']}, bare codec {evaluation['base']}")
    state = {k: v.contiguous() for k, v in trainer.state_dict()["adapter"].items()}
    card = {
        "id": the_id,
        "task": task.name,
        "task_metric": task.metric_name,
        "task_params": task.params,
        "codec": codec_id,
        "codec_sha256": codec_sha,
        "codec_file_sha256": codec_card.get("sha256") if codec_card else None,
        "adapter_sha256": tensors_digest(state).hex(),
        "lora": {"rank": job.rank, "alpha": job.alpha},
        "lambda": lmbda,
        "lr": job.lr,
        "steps": trainer.step,
        "batch": job.batch,
        "crop": job.crop,
        "seed": job.seed,
        "wall_seconds": round(wall, 1),
        "machine": machine(device),
        "normalisation": data.normalisation,
        "train_files": [str(f) for f in train_files],
        "held_out_files": [str(f) for f in eval_files],
        "evaluation": evaluation,
        "command": job.command,
    }
    path = out / f"{the_id}.safetensors"
    save_adapter(path, state, card)
    return path


def resume(run_dir: Path, trainer: Stage1Trainer, sampler: CropSampler, codec_sha: str, the_id: str, log) -> float:
    """Load the run's checkpoint if there is one; returns the seconds already trained."""
    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return 0.0
    ckpt = read_checkpoint(path)
    if ckpt.get("adapter_id") != the_id or ckpt.get("codec_sha256") != codec_sha:
        raise TTFTError(
            f"{path}: a checkpoint of {ckpt.get('adapter_id')!r} on other codec weights; "
            f"give another --run-dir or remove it"
        )
    trainer.load_state_dict(ckpt["trainer"])
    sampler.set_state(ckpt["sampler"])
    torch.set_rng_state(ckpt["torch_rng"])
    elapsed = float(ckpt["elapsed"])
    log(f"resuming {the_id} at step {trainer.step} ({elapsed / 60:.1f} min trained)")
    return elapsed


def save_checkpoint(run_dir: Path, trainer, sampler, elapsed: float, codec_sha: str, the_id: str) -> None:
    buf = io.BytesIO()
    torch.save(
        {
            "trainer": trainer.state_dict(),
            "sampler": sampler.state(),
            "torch_rng": torch.get_rng_state(),
            "elapsed": elapsed,
            "adapter_id": the_id,
            "codec_sha256": codec_sha,
        },
        buf,
    )
    write_bytes_atomic(run_dir / "checkpoint.pt", buf.getvalue())


def evaluate_adapter(
    job: TrainAdapterJob, data: TrainingSet, files: list[Path], task, model, codec_id: str, channels: int
) -> dict:
    """Rate (real bytes) and task metric on fixed held-out crops, with the adapter and without."""
    crops = CropSampler(files, data.read, job.eval_crop, seed=12345, scale=data.scale).batch(job.eval_crops)
    with_adapter = TileCodec(model, codec_id, adapter_id(codec_id, task.name))
    bare = TileCodec(open_codec(job.codec, channels=channels)[0], codec_id)
    return {"adapter": _rounded(evaluate(with_adapter, crops, task)), "base": _rounded(evaluate(bare, crops, task))}


def _rounded(figures: dict) -> dict:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in figures.items()}
