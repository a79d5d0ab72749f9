"""Stage 1, closed-set pre-training of a task's adapter: every P, s, Q of encoder and decoder is
trained, the backbone stays frozen, on rate + lambda * task loss over random crops. What it learns
is the starting point of test-time fine-tuning, and the decoder's P, Q that both sides hold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from . import lora
from .backbones import MeanScaleCodec
from .errors import TTFTError
from .metrics import bpp as bits_per_pixel
from .metrics import psnr
from .tasks import Task
from .tile_codec import TileCodec
from .training import step_decay

TaskLoss = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Stage1Config:
    lmbda: float  # weight of the task loss against bits per pixel
    lr: float = 1e-3
    total_steps: int = 1000
    # the learning rate drops tenfold at these fractions of total_steps
    decay_at: tuple[float, ...] = (0.8,)
    clip_norm: float = 1.0


class Stage1Trainer:
    """Trains the adapter already attached to ``model``; everything else stays as loaded."""

    def __init__(self, model: MeanScaleCodec, task_loss: TaskLoss, config: Stage1Config):
        if not any(True for _ in lora.lora_layers(model)):
            raise TTFTError("stage-1 training needs a codec with an adapter attached")
        self.model = model
        self.task_loss = task_loss
        self.config = config
        self.params = [model.get_parameter(name) for name in lora.set_trainable(model, "stage1")]
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)
        self.step = 0

    def learning_rate(self) -> float:
        return step_decay(self.config.lr, self.step, self.config.total_steps, self.config.decay_at)

    def train_step(self, batch: Tensor) -> dict[str, float]:
        # train mode: noisy quantisation, so rate and task loss both have gradients. The frozen
        # backbone has no batch statistics that train mode would change.
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        out = self.model(batch)
        pixels = batch.shape[0] * batch.shape[2] * batch.shape[3]
        bpp = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values()) / pixels
        task = self.task_loss(out["x_hat"], batch)
        loss = bpp + self.config.lmbda * task
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        self.optimizer.step()
        self.step += 1
        self.model.eval()
        return {"loss": loss.item(), "bpp": bpp.item(), "task_loss": task.item()}

    def state_dict(self) -> dict:
        return {"adapter": lora.adapter_state(self.model), "optimizer": self.optimizer.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        lora.load_adapter_state(self.model, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])


@torch.no_grad()
def evaluate(codec: TileCodec, crops: Tensor, task: Task) -> dict[str, float]:
    """Mean rate from real bytes (TileCodec.compress), task metric and PSNR of the decoded crops."""
    if crops.dim() != 4 or not len(crops):
        raise TTFTError("evaluation needs a (N, C, H, W) batch of crops")
    rates, metrics, psnrs = [], [], []
    for x in crops:
        data = codec.compress(x)
        x_hat = codec.decompress(data)
        rates.append(bits_per_pixel(len(data), x.shape[1], x.shape[2]))
        metrics.append(task.metric(x_hat, x))
        psnrs.append(psnr(x_hat, x))
    finite = [p for p in psnrs if math.isfinite(p)]
    return {
        "crops": len(crops),
        "bpp": sum(rates) / len(rates),
        task.metric_name: sum(metrics) / len(metrics),
        "psnr_db": sum(finite) / len(finite) if finite else math.inf,
    }
