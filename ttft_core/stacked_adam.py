"""torch.optim.Adam's update on tensors stacked along a leading tile axis, rows leaving as tiles stop.

Every operation is elementwise with scalars shared by all rows, so row b follows exactly the path
that a separate torch Adam (its single-tensor implementation, the CPU's default) on tile b's
tensors would; dropping rows keeps the others' moments and step count."""

from __future__ import annotations

import torch
from torch import Tensor

# torch.optim.Adam's defaults
BETAS = (0.9, 0.999)
EPS = 1e-8


class StackedAdam:
    """Adam with torch's defaults (no weight decay) over named tensors that carry their own grads;
    the learning rate is given at each step."""

    def __init__(self, params: dict[str, Tensor]):
        self.params = params
        self.exp_avg = {k: torch.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in params.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.steps += 1
        beta1, beta2 = BETAS
        bias_correction1 = 1 - beta1 ** float(self.steps)
        bias_correction2_sqrt = (1 - beta2 ** float(self.steps)) ** 0.5
        for k, p in self.params.items():
            grad = p.grad
            self.exp_avg[k].lerp_(grad, 1 - beta1)
            self.exp_avg_sq[k].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (self.exp_avg_sq[k].sqrt() / bias_correction2_sqrt).add_(EPS)
            p.addcdiv_(self.exp_avg[k], denom, value=-(lr / bias_correction1))
            p.grad = None

    def keep(self, rows: list[int]) -> None:
        """Go on with these rows only (new leaf tensors in ``params``)."""
        self.params = {k: p.detach()[rows].requires_grad_() for k, p in self.params.items()}
        self.exp_avg = {k: v[rows] for k, v in self.exp_avg.items()}
        self.exp_avg_sq = {k: v[rows] for k, v in self.exp_avg_sq.items()}
