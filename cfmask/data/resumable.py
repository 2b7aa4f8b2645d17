"""A training loader that can stop in the middle of an epoch and resume exactly.

Lightning saves ``state_dict()`` of every training loader that has one in each
checkpoint and hands it back to ``load_state_dict()`` when a run restarts in
the middle of an epoch. :class:`ResumableDataLoader` stores there what is needed
to continue exactly where the interrupted run stopped:

* the shuffle seed and the epoch: the order of epoch ``e`` is a permutation
  drawn from a generator seeded with ``seed + e`` (as ``DistributedSampler``
  does), so it does not depend on how many random numbers were drawn before;
* the number of batches already handed out in that epoch, which are skipped
  (by index, without loading them) when the loader is iterated again.

The loader never draws from torch's global generator, so restarting it does not
shift the random numbers that masking and refilling draw during training.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ("EpochShuffleSampler", "ResumableDataLoader", "default_shuffle_seed")


def default_shuffle_seed() -> int:
    """The run's global seed (``seed_everything``), else one draw from torch's generator.

    Returns:
        A non-negative seed.
    """
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is not None:
        return int(seed)
    return int(torch.randint(0, 2**31 - 1, ()).item())


class EpochShuffleSampler(Sampler[int]):
    """Indices ``0..size-1`` in an order fixed by ``(seed, epoch)``, optionally skipping a prefix.

    Args:
        size: Number of samples.
        seed: Shuffle seed; epoch ``e`` uses ``torch.Generator().manual_seed(seed + e)``.
        shuffle: ``False`` yields the indices in order.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields (Lightning calls this)."""
        self.epoch = epoch

    def order(self) -> list[int]:
        """All indices of the current epoch, in order."""
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order: list[int] = torch.randperm(self.size, generator=g).tolist()
        return order

    def __iter__(self) -> Iterator[int]:
        start, self.skip = self.skip, 0
        return iter(self.order()[start:])

    def __len__(self) -> int:
        return self.size


class ResumableDataLoader(DataLoader[Any]):
    """A ``DataLoader`` whose position inside an epoch survives a checkpoint.

    Takes ``DataLoader``'s arguments, except that the order comes from an
    :class:`EpochShuffleSampler` (``shuffle`` and ``seed``) unless a ``sampler``
    is passed (as Lightning does when it adds a distributed sampler; the position
    is then restored only as far as that sampler allows).

    Args:
        dataset: A sized dataset.
        batch_size: Samples per batch.
        shuffle: Shuffle every epoch.
        seed: Shuffle seed (default :func:`default_shuffle_seed`).
        **kwargs: Any other ``DataLoader`` argument (``drop_last``, ``num_workers``, …).

    Example:
        >>> loader = ResumableDataLoader(list(range(10)), batch_size=2, shuffle=True, seed=0)
        >>> it = iter(loader)
        >>> first = [next(it).tolist() for _ in range(2)]
        >>> state = loader.state_dict()
        >>> again = ResumableDataLoader(list(range(10)), batch_size=2, shuffle=True, seed=5)
        >>> again.load_state_dict(state)
        >>> [b.tolist() for b in again] == [b.tolist() for b in list(loader)[2:]]
        True
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int | None = 1,
        shuffle: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.seed = default_shuffle_seed() if seed is None else int(seed)
        self.shuffle = shuffle
        if kwargs.get("sampler") is None and kwargs.get("batch_sampler") is None:
            if not isinstance(dataset, Sized):
                raise TypeError("ResumableDataLoader needs a dataset with a length")
            kwargs["sampler"] = EpochShuffleSampler(len(dataset), self.seed, shuffle)
        kwargs.setdefault("generator", torch.Generator().manual_seed(self.seed))
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self._batches_done = 0
        self._resume_at = 0

    def _epoch_sampler(self) -> EpochShuffleSampler | None:
        sampler = self.sampler
        return sampler if isinstance(sampler, EpochShuffleSampler) else None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self._epoch_sampler()
        if sampler is not None and self.generator is not None:
            # Worker seeds are drawn from this generator: make them a function of the epoch.
            self.generator.manual_seed(self.seed + sampler.epoch)
        start, self._resume_at = self._resume_at, 0
        self._batches_done = start
        return self._counting(super().__iter__())

    def _counting(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """``{"seed", "epoch", "batches"}``: where in which epoch's order the loader is."""
        sampler = self._epoch_sampler()
        return {
            "seed": self.seed,
            "epoch": 0 if sampler is None else sampler.epoch,
            "batches": self._batches_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue after the batches already handed out."""
        sampler = self._epoch_sampler()
        if sampler is None:
            return
        self.seed = sampler.seed = int(state["seed"])
        batches = int(state["batches"])
        if batches >= len(self):  # the epoch was finished: start the next one
            sampler.set_epoch(int(state["epoch"]) + 1)
            sampler.skip = self._resume_at = self._batches_done = 0
            return
        sampler.set_epoch(int(state["epoch"]))
        sampler.skip = batches * int(self.batch_size or 1)
        self._resume_at = self._batches_done = batches
