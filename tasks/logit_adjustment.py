"""Logit adjustment: train on logits shifted by the log of the client's own label prior.

A client of a label-skewed federation (``partition=dirichlet:a``) sees a few classes
often and others rarely or never; plain cross-entropy then pulls its model towards
predicting its own frequent classes, and the updates the server averages disagree.
Adding ``tau * log(prior)`` to the logits inside the loss (the logit-adjusted loss of
Menon et al. 2021, "Long-tail learning via logit adjustment"; with ``tau=1`` the balanced
softmax of Ren et al. 2020; FedLC, Zhang et al. 2022, calibrates logits by each client's
label counts against label skew in the same spirit, with another formula) lets the
model's own logits fit the class-conditional part only: the prior is supplied by the
shift, so rare classes are not pushed down and absent ones are barely touched.
Prediction uses the unshifted logits.

The prior is each client's label counts plus one (Laplace smoothing: a class the client
never sees gets a large negative shift instead of minus infinity). The counts stay on the
client; only the trained weights leave it.
"""

from __future__ import annotations

import numpy as np
import torch


def label_log_prior(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``log((n_c + 1) / (n + C))`` for each class ``c`` of ``num_classes`` (float32)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            "logit-adjustment needs one class index per example; multi-label targets "
            f"have shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}; got {labels.min()}..{labels.max()}")
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes).astype(np.float64) + 1.0
    return torch.from_numpy(np.log(counts / counts.sum())).float()
