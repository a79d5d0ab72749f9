"""A checkerboard spatial context for the mean-scale hyperprior (He et al., CVPR 2021).

The latents y are split like a checkerboard. The anchors (row + column even) are coded first,
with the Gaussian that the hyperprior alone predicts; the other half then also sees its decoded
anchor neighbours through a 5x5 convolution. Decoding stays two parallel passes, not one pass
per latent as with a serial autoregressive context, so a tile decodes in about the hyperprior's time.

The context only adds to the hyperprior's prediction (a residual whose last layer starts at zero):
a codec started from hyperprior weights codes exactly as before until the context is trained, and
g_a and g_s (where SVD-LoRA adapts) are untouched by it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

KERNEL = 5


def anchor_mask(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """(H, W) booleans, True on the anchors: the latents whose row + column is even."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None]
    return (rows + cols) % 2 == 0


class CheckerboardContext(nn.Module):
    """Gaussian parameters for y from the hyperprior's (2M channels: scales, then means) and the
    decoded anchors."""

    def __init__(self, M: int):
        super().__init__()
        self.context_prediction = nn.Conv2d(M, 2 * M, KERNEL, padding=KERNEL // 2)
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(4 * M, 2 * M, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(2 * M, 2 * M, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(2 * M, 2 * M, 1),
        )
        nn.init.zeros_(self.entropy_parameters[-1].weight)
        nn.init.zeros_(self.entropy_parameters[-1].bias)

    def anchor_parameters(self, hyper: Tensor) -> Tensor:
        """Parameters of the anchors: no context yet, so zeros take its place."""
        return self._refine(hyper, torch.zeros_like(hyper))

    def context_parameters(self, hyper: Tensor, anchors_hat: Tensor) -> Tensor:
        """Parameters of the non-anchors from ``anchors_hat``, decoded y with the non-anchors zeroed:
        a non-anchor's 5x5 neighbourhood then holds nothing the decoder does not have yet."""
        return self._refine(hyper, self.context_prediction(anchors_hat))

    def _refine(self, hyper: Tensor, context: Tensor) -> Tensor:
        return hyper + self.entropy_parameters(torch.cat([hyper, context], 1))

    def parameters_for(self, y: Tensor, hyper: Tensor, round_anchors) -> Tensor:
        """Every latent's parameters at once, for training and tuning: the anchors' from the
        hyperprior, the others' from the anchors as ``round_anchors(y, means)`` gives them (the
        rounding the coder applies, with whatever gradient the caller wants)."""
        anchors = anchor_mask(*y.shape[-2:], device=y.device)
        first = self.anchor_parameters(hyper)
        _, means = first.chunk(2, 1)
        anchors_hat = torch.where(anchors, round_anchors(y, means), torch.zeros_like(y))
        return torch.where(anchors, first, self.context_parameters(hyper, anchors_hat))
