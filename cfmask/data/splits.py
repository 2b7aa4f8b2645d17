"""Held-out splits: a stratified, seeded split of sample indices and the sets carved by it.

Both datamodules hold out a validation part (and the folder module a test part)
from the training images when there is no folder for it: the indices come from
:func:`stratified_split`, the new set from :func:`carve_subset`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cfmask.data.folder import FolderImageDataset, SkipLog

__all__ = ("carve_subset", "stratified_split")


def stratified_split(labels: Tensor, val_size: int | float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split sample indices into train and held-out parts with per-class proportions.

    Each class gets ``floor(n_c * V / N)`` held-out samples; the remaining
    ``V - sum`` go to the classes with the largest fractional parts (ties broken
    at random with ``seed``). Within a class the held-out samples are a seeded
    random choice. Same idea as scikit-learn's stratified ``train_test_split``,
    but not the same random draw.

    Args:
        labels: ``(N,)`` integer class of every sample.
        val_size: Held-out count (``int``) or fraction of ``N`` (``float`` in (0, 1)).
        seed: Random seed.

    Returns:
        ``(train_idx, val_idx)``: sorted long tensors that partition ``range(N)``.

    Example:
        >>> tr, va = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1]), 3, seed=0)
        >>> len(tr), len(va), torch.bincount(torch.tensor([0, 0, 0, 0, 1, 1])[va]).tolist()
        (3, 3, [2, 1])
    """
    n = int(labels.numel())
    v = round(val_size * n) if isinstance(val_size, float) else int(val_size)
    if isinstance(val_size, float) and not 0.0 < val_size < 1.0:
        raise ValueError(f"a fractional val_size must lie in (0, 1), got {val_size}")
    if not 0 <= v < n:
        raise ValueError(f"val_size={val_size} must leave training samples; there are {n}")
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * v / n
    base = quota.floor().long()
    rest = v - int(base.sum())
    if rest > 0:
        frac = quota - base.double()
        tiebreak = torch.rand(len(classes), generator=g, dtype=torch.float64)
        order = sorted(range(len(classes)), key=lambda i: (-float(frac[i]), float(tiebreak[i])))
        for i in order[:rest]:
            base[i] += 1
    val_parts = []
    for c, k in zip(classes.tolist(), base.tolist(), strict=True):
        if k == 0:
            continue
        idx = (labels == c).nonzero().squeeze(1)
        val_parts.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val_idx = torch.cat(val_parts).sort().values if val_parts else torch.empty(0, dtype=torch.long)
    mask = torch.ones(n, dtype=torch.bool)
    mask[val_idx] = False
    return mask.nonzero().squeeze(1), val_idx


def carve_subset(
    ds: FolderImageDataset, name: str, idx: Tensor, transform: Any, skip_log: SkipLog | None
) -> FolderImageDataset:
    """A new set over ``ds``'s samples ``idx`` with its own name, transform and skip log.

    Each carved part records its undecodable images in its own log, so a skip is
    reported against the set whose score it changed. Classes, class subset,
    label kind, layout and object masks stay those of ``ds``.

    Args:
        ds: The set to carve from.
        name: Name of the new set (in logs and results).
        idx: ``(K,)`` long indices into ``ds.samples``, e.g. one part of
            :func:`stratified_split`.
        transform: Image transform of the new set.
        skip_log: Where the new set records skipped images, or ``None``.

    Returns:
        The set of those ``K`` samples, in ``idx`` order.
    """
    samples = [(ds.samples[i].path, ds.samples[i].class_index) for i in idx.tolist()]
    return FolderImageDataset(
        name,
        ds.root,
        ds.folders,
        ds.targets,
        transform=transform,
        expected_count=None,
        skip_corrupt=ds.skip_corrupt,
        skip_log=skip_log,
        samples=samples,
        num_classes=ds.num_classes,
        class_subset=ds.class_subset,
        multi_label=ds.multi_label,
        layout=ds.layout,
        mask_root=ds.mask_root,
    )
