"""A frozen classifier (FedBABU, Oh et al., ICLR 2022): clients train the body only.

Under label skew each client pulls the last layer towards its own classes, and
averaging those heads is where FedAvg loses most (Luo et al. 2021, "No Fear of
Heterogeneity"). FedBABU keeps the classifier at its random initialisation for
the whole federation, so every client learns features for the same fixed class
directions (measured: benchmarks/results/pointcloud_fedbabu.md).

The classifier is the model's last ``nn.Linear`` (the layer that produces the
logits in every fedloom model). Frozen means ``requires_grad`` is off: local
optimizers, DP-SGD and the proximal term leave it alone, and its update is zero.
"""

from __future__ import annotations

from torch import nn


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model`` (its logits layer)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"freeze-classifier needs a model whose last layer is nn.Linear; "
            f"{type(model).__name__} has none"
        )
    return linears[-1]


def freeze_classifier(model: nn.Module, *, reinit: bool = False) -> nn.Linear:
    """Turn off gradients of ``model``'s classifier; return it.

    ``reinit`` (the server, once, on the initial model): draw the layer again
    with PyTorch's default (Kaiming-uniform) init from the global RNG. A
    classifier that starts at zero (the MedMNIST ResNet's) would otherwise stay
    at zero and pass no gradient to the body.
    """
    layer = classifier_layer(model)
    if reinit:
        layer.reset_parameters()
    layer.requires_grad_(False)
    return layer


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters local training updates (all but a frozen classifier)."""
    return [p for p in model.parameters() if p.requires_grad]
