"""Small deterministic training loops for the shipped models (CPU, seconds not hours)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

Log = Callable[[str], None]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    log: Log | None = None,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Adam with cosine decay and cross-entropy; batches drawn from a seeded generator.

    ``extra_loss(model)`` is added to every batch's loss (e.g. a bit budget penalty);
    ``on_epoch(epoch, model)`` runs before each epoch (e.g. a progressive bit-width schedule).
    """
    generator = torch.Generator().manual_seed(seed)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        if on_epoch is not None:
            on_epoch(epoch, model)
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(inputs), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(inputs[batch]), labels[batch])
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        schedule.step()
        if log and (epoch + 1) % 10 == 0:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(inputs):.4f}")
    model.eval()
    return model


def calibrate(model: nn.Module, x: np.ndarray) -> None:
    """Initialise every quantizer's step from one batch (LSQ's data-driven init)."""
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(x))
    model.eval()
