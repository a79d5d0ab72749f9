"""Stage 0, training a base codec: rate-distortion loss plus CompressAI's auxiliary loss on the
entropy bottleneck's quantiles, with two optimizers as CompressAI trains its zoo."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .backbones import MeanScaleCodec

# CompressAI's trade-off at its quality 3: what a codec is trained at unless told, and the weight
# of a codec without a card (an untrained backbone)
DEFAULT_LAMBDA = 0.0067


def task_weight(codec_lambda: float, scale: float = 1.0) -> float:
    """The weight of a task loss on [0, 1] values against bits per pixel: the codec's trade-off,
    lambda * 255^2 (CompressAI's weight on the MSE of 8-bit values), times the task's share."""
    return codec_lambda * 255**2 * scale


@dataclass(frozen=True)
class BaseTrainConfig:
    lmbda: float = DEFAULT_LAMBDA
    lr: float = 5e-4
    aux_lr: float = 1e-3
    total_steps: int = 60_000
    # the learning rate drops tenfold at these fractions of total_steps
    decay_at: tuple[float, ...] = (0.75, 0.92)
    clip_norm: float = 1.0


def rate_distortion(out: dict, x: Tensor, lmbda: float) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, bpp, mse): loss = bpp + lambda * 255^2 * MSE, CompressAI's convention for 8-bit data."""
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    bpp = bits / pixels
    mse = torch.mean((out["x_hat"] - x) ** 2)
    return bpp + task_weight(lmbda) * mse, bpp, mse


def step_decay(lr: float, step: int, total_steps: int, decay_at: tuple[float, ...]) -> float:
    """``lr`` divided by ten at each fraction of the run in ``decay_at`` that ``step`` has passed."""
    return lr * 0.1 ** sum(step >= f * total_steps for f in decay_at)


class BaseTrainer:
    def __init__(self, model: MeanScaleCodec, config: BaseTrainConfig):
        self.model = model
        self.config = config
        main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
        aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
        self.optimizer = torch.optim.Adam(main, lr=config.lr)
        self.aux_optimizer = torch.optim.Adam(aux, lr=config.aux_lr)
        self.step = 0

    def learning_rate(self) -> float:
        return step_decay(self.config.lr, self.step, self.config.total_steps, self.config.decay_at)

    def train_step(self, batch: Tensor) -> dict[str, float]:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        out = self.model(batch)
        loss, bpp, mse = rate_distortion(out, batch, self.config.lmbda)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.optimizer.step()
        aux_loss = self.model.aux_loss()
        self.aux_optimizer.zero_grad(set_to_none=True)
        aux_loss.backward()
        self.aux_optimizer.step()
        self.step += 1
        psnr = -10 * math.log10(max(mse.item(), 1e-12))
        return {"loss": loss.item(), "bpp": bpp.item(), "psnr": psnr, "aux": aux_loss.item()}

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        self.step = int(state["step"])
