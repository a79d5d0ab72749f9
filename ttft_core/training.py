"""Stage 0, training a base codec: rate-distortion loss plus CompressAI's auxiliary loss on the
entropy bottleneck's quantiles, with two optimizers as CompressAI trains its zoo."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .backbones import MeanScaleCodec
from .errors import TTFTError

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
    bpp = bits_per_pixel(out, x)
    mse = torch.mean((out["x_hat"] - x) ** 2)
    return bpp + task_weight(lmbda) * mse, bpp, mse


def bits_per_pixel(out: dict, x: Tensor) -> Tensor:
    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    return bits / (x.shape[0] * x.shape[2] * x.shape[3])


def step_decay(lr: float, step: int, total_steps: int, decay_at: tuple[float, ...]) -> float:
    """``lr`` divided by ten at each fraction of the run in ``decay_at`` that ``step`` has passed."""
    return lr * 0.1 ** sum(step >= f * total_steps for f in decay_at)


def train_context_only(model: MeanScaleCodec) -> None:
    """Freeze everything but the checkerboard context: the transforms, the hyperprior and the
    entropy bottleneck stay as they are, so only y's rate can change, and the stage-1 adapters of
    the codec it grew from keep adapting the very same g_a and g_s."""
    if model.context is None:
        raise TTFTError(f"only a codec with a context can train its context alone, not a {model.config.backbone}")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("context."))


class BaseTrainer:
    """Trains the parameters that require gradients (all of them unless frozen beforehand)."""

    def __init__(self, model: MeanScaleCodec, config: BaseTrainConfig):
        self.model = model
        self.config = config
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        main = [p for n, p in trained if not n.endswith(".quantiles")]
        aux = [p for n, p in trained if n.endswith(".quantiles")]
        self.optimizer = torch.optim.Adam(main, lr=config.lr)
        self.aux_optimizer = torch.optim.Adam(aux, lr=config.aux_lr) if aux else None
        # With g_a and g_s frozen (train_context_only) no trained weight can move the distortion:
        # the loss is the rate alone, and the synthesis is not run.
        self.rate_only = not any(p.requires_grad for p in (*model.g_a.parameters(), *model.g_s.parameters()))
        self.step = 0

    def learning_rate(self) -> float:
        return step_decay(self.config.lr, self.step, self.config.total_steps, self.config.decay_at)

    def train_step(self, batch: Tensor) -> dict[str, float]:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        if self.rate_only:
            out = {"likelihoods": self.model.latents(batch)[1]}
            loss = bpp = bits_per_pixel(out, batch)
        else:
            out = self.model(batch)
            loss, bpp, mse = rate_distortion(out, batch, self.config.lmbda)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.optimizer.step()
        aux_loss = self.model.aux_loss()
        if self.aux_optimizer is not None:
            self.aux_optimizer.zero_grad(set_to_none=True)
            aux_loss.backward()
            self.aux_optimizer.step()
        self.step += 1
        figures = {"loss": loss.item(), "bpp": bpp.item(), "aux": aux_loss.item()}
        if not self.rate_only:
            figures["psnr"] = -10 * math.log10(max(mse.item(), 1e-12))
        return figures

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict() if self.aux_optimizer else {},
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.aux_optimizer is not None:
            self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        self.step = int(state["step"])
