"""A tiny network for the user-task tests, imported by its spec as ``tests.task_nets:tiny_features``."""

from collections import OrderedDict

from torch import nn


def tiny_features(channels: int = 3, width: int = 4) -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(channels, width, 3, padding=1),
            act=nn.ReLU(),
            down=nn.Conv2d(width, width, 3, stride=2, padding=1),
        )
    )


NOT_A_FACTORY = 42
