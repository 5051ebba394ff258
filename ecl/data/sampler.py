"""The order in which training sees its data: a function of (seed, epoch, step) only.

:class:`GlobalBatchSampler` cuts every epoch's seeded permutation into global batches and gives each
process its slice, and :func:`flip_mask` decides the random horizontal flips of a step, so the images a
step sees do not depend on the number of processes, the number of loader workers or a resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ecl.config import ConfigError

__all__ = ["GlobalBatchSampler", "collate_images_labels", "flip_mask"]


def collate_images_labels(items: list[dict]) -> tuple[Tensor, Tensor]:
    # Only images and labels are needed to train: skip stacking landmarks and part masks.
    images = torch.stack([item["image"] for item in items])
    labels = torch.as_tensor([int(item["label"]) for item in items], dtype=torch.long)
    return images, labels


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this process's slice of every global batch; the order is a function of (seed, epoch).

    Each epoch is a seeded permutation of the dataset cut into ``len(dataset) // global_batch``
    global batches (the remainder is dropped). Process ``rank`` of ``world_size`` takes the
    contiguous slice ``[rank * b, (rank + 1) * b)`` of each, ``b = global_batch / world_size``, so
    the images of one step do not depend on the number of processes. ``set_epoch(epoch,
    start_batch)`` skips the batches a resumed run has already consumed.

    Args:
        num_items: dataset length.
        global_batch: images per optimisation step over all processes.
        seed: base seed of the order.
        rank: this process.
        world_size: number of processes.
    """

    def __init__(
        self, num_items: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if global_batch % world_size:
            raise ConfigError(
                f"optim.batch_size={global_batch} must be divisible by the number of processes ({world_size})"
            )
        if num_items < global_batch:
            raise ConfigError(
                f"the training set has {num_items} images, fewer than optim.batch_size={global_batch}; "
                "lower optim.batch_size or use more data"
            )
        self.num_items = num_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=generator)
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * self.global_batch + self.rank * self.local_batch
            yield order[start : start + self.local_batch].tolist()


def flip_mask(seed: int, step: int, global_batch: int, rank: int, local_batch: int) -> Tensor:
    # Decided over the global batch from (seed, step), then sliced: independent of process count.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * step + 1)
    flips = torch.rand(global_batch, generator=generator) < 0.5
    return flips[rank * local_batch : (rank + 1) * local_batch]
