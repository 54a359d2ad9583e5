"""The training demo and loader timing behind `fmq-loader train|bench` and examples/.

``train(loader, ...)`` runs SGD on ``SmallCNN`` for a number of steps and measures
what a user cares about: images/s of the whole loop, and the share of loop time spent
waiting in ``next(loader)`` (data-wait share: near 0 means the loader keeps up, near
1 means the model waits for data). ``time_loader`` measures a loader alone: time to
the first batch (worker start-up included) and images/s after it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["SmallCNN", "TrainResult", "LoaderTiming", "train", "time_loader"]


class SmallCNN(nn.Module):
    """Four strided conv layers and a linear head; any input size >= 16 px."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        layers, cin = [], 3
        for cout in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class TrainResult:
    """What one training run measured (timed steps exclude the warm-up steps)."""

    steps: int
    images: int
    seconds: float
    images_per_s: float
    data_wait_share: float
    first_batch_s: float
    first_loss: float
    final_loss: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LoaderTiming:
    """What iterating a loader alone measured."""

    first_batch_s: float
    batches: int
    images: int
    seconds: float
    images_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def _as_float_images(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _batches(loader: Iterable, steps: int):
    """Yield (seconds waited in next(), batch) until ``steps`` batches, epoch after epoch."""
    done = 0
    while done < steps:
        it = iter(loader)
        empty = True
        while done < steps:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            empty = False
            done += 1
            yield time.perf_counter() - t0, batch
        if empty:
            raise ValueError("the loader yields no batch; check the dataset and drop_last")


def train(loader: Iterable, num_classes: int, steps: int = 200, *, lr: float = 0.05,
          momentum: float = 0.9, warmup_steps: int = 5, log_every: int = 50,
          log: Callable[[str], None] | None = print, seed: int = 0,
          progress: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``SmallCNN`` on (images, labels) batches for ``steps`` SGD steps on the CPU.

    Args:
        loader: yields (float or uint8 NCHW images, int labels); re-iterated per epoch.
        num_classes: labels are in [0, num_classes).
        steps: optimizer steps; warmup_steps of them are not timed.
        log: called with a progress line every ``log_every`` steps, and at the end with
            ``loader.stats().summary()`` when the loader has ``stats()``; None is silent.
        progress: called with the step number after each step (a progress bar).

    Returns:
        a TrainResult (images/s and data-wait share over the timed steps).
    """
    if warmup_steps >= steps:
        raise ValueError(f"warmup_steps must be < steps, got {warmup_steps} >= {steps}")
    torch.manual_seed(seed)
    model = SmallCNN(num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    first_batch_s = first_loss = loss_value = 0.0
    waited = images = 0
    timed_from = None
    window_loss, window_n = 0.0, 0
    for step, (wait, (x, y)) in enumerate(_batches(loader, steps), 1):
        if step == 1:
            first_batch_s = time.perf_counter() - start
        if step == warmup_steps + 1:
            timed_from = time.perf_counter() - wait
        if timed_from is not None:
            waited += wait
            images += len(y)
        loss = loss_fn(model(_as_float_images(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        if step == 1:
            first_loss = loss_value
        window_loss, window_n = window_loss + loss_value, window_n + 1
        if log is not None and (step % log_every == 0 or step == steps):
            elapsed = time.perf_counter() - (timed_from or start)
            rate = images / elapsed if timed_from is not None and elapsed > 0 else 0.0
            share = waited / elapsed if timed_from is not None and elapsed > 0 else 0.0
            log(f"step {step:>5}/{steps}  loss {window_loss / window_n:.3f}  "
                f"{rate:8.1f} img/s  data wait {100 * share:4.1f}%")
            window_loss, window_n = 0.0, 0
        if progress is not None:
            progress(step)
    seconds = time.perf_counter() - timed_from
    stats = getattr(loader, "stats", None)
    if log is not None and stats is not None:
        log(f"loader stats: {stats().summary()}")
    return TrainResult(steps=steps, images=images, seconds=seconds,
                       images_per_s=images / seconds, data_wait_share=waited / seconds,
                       first_batch_s=first_batch_s, first_loss=first_loss,
                       final_loss=loss_value)


def time_loader(loader: Iterable, batches: int,
                progress: Callable[[int], None] | None = None) -> LoaderTiming:
    """Time the first batch (start-up included), then ``batches`` more, epoch after epoch.

    ``progress`` is called with the number of batches done after each timed batch.
    """
    start = time.perf_counter()
    gen = _batches(loader, batches + 1)
    _, first = next(gen)
    first_batch_s = time.perf_counter() - start
    del first
    t0 = time.perf_counter()
    images = n = 0
    for _, (x, y) in gen:
        images += len(y)
        n += 1
        if progress is not None:
            progress(n)
    seconds = time.perf_counter() - t0
    return LoaderTiming(first_batch_s=first_batch_s, batches=n, images=images,
                        seconds=seconds, images_per_s=images / seconds if seconds > 0 else 0.0)
