"""A small generated image-classification datamodule for smoke runs and tests.

Each class is a fixed random colour pattern on a coarse grid; every image is its
class pattern with per-image noise and a random bright square, so a tiny ViT can
learn it in a few steps. Several test sets are made with increasing noise, so the
evaluation path (one ID set plus named shifted sets) can be exercised without any
download.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from cfmask.data.relevance_cache import IndexedDataset
from cfmask.data.resumable import ResumableDataLoader
from cfmask.evaluation.eval_sets import EvalSet

__all__ = ("SyntheticDataModule", "make_synthetic_images")


def make_synthetic_images(
    num_images: int,
    num_classes: int,
    image_size: int,
    noise: float,
    seed: int,
    pattern_seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Generate labelled images in ``[0, 1]``.

    Args:
        num_images: Number of images ``B``.
        num_classes: Number of classes.
        image_size: Side ``S`` of the square images.
        noise: Std of the per-pixel Gaussian noise.
        seed: Seed of the per-image randomness.
        pattern_seed: Seed of the class patterns (shared by all splits).

    Returns:
        Images ``(B, 3, S, S)`` and labels ``(B,)``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    pattern_gen = torch.Generator().manual_seed(pattern_seed)
    cells = 4
    patterns = torch.rand(num_classes, 3, cells, cells, generator=pattern_gen)
    patterns = torch.nn.functional.interpolate(patterns, size=image_size, mode="nearest")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_images) % num_classes
    labels = labels[torch.randperm(num_images, generator=gen)]
    images = patterns[labels] + noise * torch.randn(
        num_images, 3, image_size, image_size, generator=gen
    )
    side = max(1, image_size // 4)
    corners = torch.randint(0, image_size - side + 1, (num_images, 2), generator=gen)
    for i, (r, c) in enumerate(corners.tolist()):
        images[i, :, r : r + side, c : c + side] = 1.0
    return images.clamp(0.0, 1.0), labels


class SyntheticDataModule(pl.LightningDataModule):
    """Generated data: a training split, a held-out split and named test sets.

    Args:
        num_classes: Number of classes.
        image_size: Side of the square images.
        train_size: Number of training images.
        val_size: Number of held-out images (``val/acc1``).
        test_size: Number of images per test set.
        test_sets: Names of the test sets; the first is in-distribution, each
            further one adds more noise.
        batch_size: Batch size of every loader (training drops the last partial batch).
        seed: Seed of the generated data.
    """

    def __init__(
        self,
        num_classes: int = 3,
        image_size: int = 32,
        train_size: int = 64,
        val_size: int = 16,
        test_size: int = 16,
        test_sets: list[str] | None = None,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_size = image_size
        self.train_size = train_size
        self.val_size = val_size
        self.test_size = test_size
        self.test_set_names = list(test_sets) if test_sets is not None else ["id", "shifted"]
        self.batch_size = batch_size
        self.seed = seed
        self.class_names = [f"class {i}" for i in range(num_classes)]
        #: Training batches end with the ``(B,)`` sample indices (set by a fine-tuner
        #: with ``relevance_source="cached_teacher"``).
        self.index_training_batches = False
        self.eval_sets = [
            EvalSet(name=n, num_classes=num_classes, num_samples=test_size, is_id=(i == 0))
            for i, n in enumerate(self.test_set_names)
        ]

    def _split(self, size: int, noise: float, offset: int) -> TensorDataset:
        x, y = make_synthetic_images(
            size, self.num_classes, self.image_size, noise, self.seed + offset
        )
        return TensorDataset(x, y)

    def train_dataloader(self) -> DataLoader[tuple[Tensor, ...]]:
        """Shuffled training batches of equal size (resumable inside an epoch)."""
        train = self._split(self.train_size, 0.05, 1)
        return ResumableDataLoader(
            IndexedDataset(train) if self.index_training_batches else train,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            seed=self.seed,
        )

    def val_dataloader(self) -> DataLoader[tuple[Tensor, ...]]:
        """The held-out split."""
        return DataLoader(
            self._split(self.val_size, 0.05, 2),
            batch_size=self.batch_size,
            generator=torch.Generator().manual_seed(0),  # evaluation never draws global RNG
        )

    def test_dataloader(self) -> list[DataLoader[tuple[Tensor, ...]]]:
        """One loader per name in :attr:`test_set_names`, noisier for each shift."""
        return [
            DataLoader(
                self._split(self.test_size, 0.05 + 0.15 * i, 10 + i),
                batch_size=self.batch_size,
                generator=torch.Generator().manual_seed(0),
            )
            for i in range(len(self.test_set_names))
        ]

    def predict_dataloader(self) -> list[DataLoader[tuple[Tensor, ...]]]:
        """Same loaders as :meth:`test_dataloader` (for ``cfmask predict``)."""
        return self.test_dataloader()
