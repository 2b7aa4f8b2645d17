"""Lightning callbacks shipped with cfmask."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from torch import Tensor

from cfmask.evaluation.reporting import results_table, write_results
from cfmask.functional.patches import check_object_masks, mask_overlap_rates, patch_mask_to_pixels
from cfmask.masking.maskers import ObjectMasker
from cfmask.relevance.attention import AttentionGradRelevance
from cfmask.relevance.base import RelevanceMap
from cfmask.training.finetuner import CounterfactualFineTuner
from cfmask.training.objective import CounterfactualObjective
from cfmask.training.visualization import counterfactual_grid

__all__ = ("CounterfactualImageLogger", "MaskQualityMonitor", "TestResultsReport")


class TestResultsReport(pl.Callback):
    """After ``trainer.test``, print the results table and write JSON and CSV.

    Top-1 and top-5 come from the module's ``test_results`` and
    ``test_results_top5`` (the fine-tuner logs them as ``test/<set>/acc1`` and
    ``test/<set>/acc5``); top-5 is shown next to top-1. Sets with five classes or
    fewer have no top-5. Truncated sets and
    skipped images (when the datamodule reports them) are flagged in both, so a
    number from an incomplete set is never shown bare.

    Args:
        output_dir: Where to write ``results.json``/``results.csv``; defaults to
            the trainer's log directory.
    """

    #: Not a test class, although pytest collects ``Test*`` names it imports.
    __test__ = False

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.top5: dict[str, float] = {}

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report the results gathered by the module's ``on_test_epoch_end``."""
        results = getattr(pl_module, "test_results", None)
        if not results or not trainer.is_global_zero:
            return
        self.top5 = dict(getattr(pl_module, "test_results_top5", None) or {})
        eval_sets = getattr(pl_module, "test_eval_sets", None)
        datamodule = getattr(trainer, "datamodule", None)
        skipped_fn = getattr(datamodule, "skipped_images", None)
        skipped = skipped_fn() if callable(skipped_fn) else None
        scored = getattr(pl_module, "test_counts", None) or None
        console = Console()
        console.print(
            results_table(
                results, eval_sets=eval_sets, skipped=skipped, scored=scored, top5=self.top5
            )
        )
        directory = self.output_dir or trainer.log_dir or trainer.default_root_dir
        json_path, csv_path = write_results(
            results, directory, eval_sets=eval_sets, skipped=skipped, scored=scored, top5=self.top5
        )
        console.print(f"results written to {json_path} and {csv_path}")


class CounterfactualImageLogger(pl.Callback):
    """Log, every ``every_n_steps`` optimiser steps, a picture of the counterfactual objective.

    The picture (:func:`~cfmask.training.visualization.counterfactual_grid`) has one column per
    image of a fixed batch (the first ``num_images`` images of the first training
    batch, with their object masks when the batch carries them) and one row each for
    the images, their relevance maps (when the fine-tuner has a relevance map), the
    masked patches and the counterfactual images, computed with the model as it is
    at that step by the fine-tuner's
    :class:`~cfmask.training.objective.CounterfactualObjective` (its relevance map and
    :meth:`~cfmask.training.objective.CounterfactualObjective.make_counterfactual`). It is
    what to look at when a masking run behaves oddly: masks that cover the
    background instead of the object, relevance that collapses, refills that leave
    the object visible.

    It is written to every :class:`~lightning.pytorch.loggers.TensorBoardLogger` of
    the trainer (the default logger) under ``tag``, on global rank 0. The random
    draws of maskers and refillers run on a forked RNG, so a run with this callback
    trains exactly as one without it.

    Args:
        every_n_steps: Log at optimiser steps ``0, n, 2n, ...``.
        num_images: Images in the fixed batch (at least 2: refills take patches from
            other images of the batch).
        tag: TensorBoard image tag.
    """

    def __init__(
        self, every_n_steps: int = 500, num_images: int = 8, tag: str = "train/counterfactuals"
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if num_images < 2:
            raise ValueError(
                f"num_images must be >= 2 (refills take patches from other images), got "
                f"{num_images}"
            )
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.tag = tag
        self._batch: tuple[Tensor, Tensor] | None = None
        self._object_masks: Tensor | None = None
        self._last_step = -1
        self._warned = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Keep the fixed batch; log the picture when a logging step starts."""
        if batch is None:
            return
        if self._batch is None:
            images, targets = batch[0], batch[1]
            n = min(self.num_images, images.shape[0])
            self._batch = (images[:n].detach().cpu(), targets[:n].detach().cpu())
            if len(batch) > 2:  # (images, targets, object masks)
                self._object_masks = batch[2][:n].detach().cpu()
        step = trainer.global_step
        if step % self.every_n_steps or step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers:
            if not self._warned:
                warnings.warn(
                    "CounterfactualImageLogger writes to TensorBoard, but the trainer has no "
                    "TensorBoardLogger; set trainer.logger to one (the default when logger "
                    "is not disabled).",
                    UserWarning,
                    stacklevel=2,
                )
                self._warned = True
            return
        grid = self.picture(pl_module)
        for writer in writers:
            writer.add_image(self.tag, grid, global_step=step)

    def picture(self, pl_module: pl.LightningModule) -> Tensor:
        """The grid of the fixed batch for the module's current weights.

        Args:
            pl_module: A :class:`~cfmask.CounterfactualFineTuner`.

        Returns:
            ``(3, H', W')`` image in ``[0, 1]``.
        """
        if not isinstance(pl_module, CounterfactualFineTuner):
            raise TypeError(
                f"CounterfactualImageLogger needs a CounterfactualFineTuner, got "
                f"{type(pl_module).__name__}"
            )
        if self._batch is None:
            raise RuntimeError("no training batch seen yet")
        objective = pl_module.objective
        images, targets = (t.to(pl_module.device) for t in self._batch)
        student = objective.student
        grid_size, patch_size = student.grid_size, student.patch_size
        devices = [pl_module.device.index or 0] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            scores = None
            if objective.relevance is not None:
                scores = objective.relevance_scores(images, targets)
            object_masks = (
                None if self._object_masks is None else self._object_masks.to(pl_module.device)
            )
            cf, mask = objective.make_counterfactual(
                images, targets, scores=scores, object_masks=object_masks
            )
        return counterfactual_grid(images, mask, cf, grid_size, patch_size, scores=scores)


#: The measures of :class:`MaskQualityMonitor`, in the order of the paper's Table 2.
MASK_QUALITY_MEASURES: tuple[str, ...] = ("image_mr", "object_mr", "iou")


class MaskQualityMonitor(pl.Callback):
    """Measure CAM object masks against ground-truth object masks during training.

    The check of the paper's Table 2 ([0], Sec. 4.2, Appendix A.2) for any
    datamodule whose training batches are ``(images, targets, object_masks)`` with
    ``(B, H, W)`` masks (for example :class:`~cfmask.data.ImageFolderDataModule`
    with ``masks_root``). On every ``every_n_batches``-th training batch, before
    the optimisation step, it computes the relevance map of the current model the
    way the fine-tuner does
    (:meth:`~cfmask.training.objective.CounterfactualObjective.relevance_scores`),
    thresholds it with :class:`~cfmask.masking.ObjectMasker` at each threshold,
    expands the patch masks to pixels and compares them with the object masks:
    image masking rate, object masking rate and IoU
    (:func:`~cfmask.functional.mask_overlap_rates`), averaged over images.

    Images without object pixels are left out of the averages and counted in
    ``skipped_empty``. At each training epoch end the running averages since the
    start of training are logged as ``mask_quality/t=<threshold>/<measure>``;
    :meth:`rows` returns them as a table. Under DDP the sums are added over ranks.
    The measurement draws no random numbers and leaves no gradients, so training
    goes exactly as without the monitor.

    Args:
        thresholds: CAM thresholds, in ``[0, 1]`` (the paper's grid by default).
        every_n_batches: Measure every ``n``-th training batch.
        relevance: Relevance map to measure; defaults to the fine-tuner's own map,
            or :class:`~cfmask.relevance.AttentionGradRelevance` when the fine-tuner
            has none (a run with random, exact-mask or no masks).

    Raises:
        ValueError: For a threshold outside ``[0, 1]`` or ``every_n_batches < 1``.

    Example:
        >>> monitor = MaskQualityMonitor(thresholds=(0.4, 0.6), every_n_batches=10)
        >>> monitor.rows()
        []

    References:
        [0] Xiao et al., *Masked Images Are Counterfactual Samples for Robust
        Fine-tuning*, CVPR 2023, arXiv:2303.03052.
    """

    def __init__(
        self,
        thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6),
        every_n_batches: int = 1,
        relevance: RelevanceMap | None = None,
    ) -> None:
        super().__init__()
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, got {every_n_batches}")
        if not thresholds:
            raise ValueError("thresholds must name at least one CAM threshold")
        self.maskers = {float(t): ObjectMasker(threshold=float(t)) for t in thresholds}
        self.every_n_batches = every_n_batches
        self.relevance = relevance
        self._fallback: RelevanceMap | None = None
        #: ``(T, 3)`` sums of the per-image measures, per threshold (sorted as given).
        self.sums = torch.zeros(len(self.maskers), len(MASK_QUALITY_MEASURES), dtype=torch.float64)
        #: Images measured (with object pixels).
        self.count = 0
        #: Images left out because their object mask is empty.
        self.skipped_empty = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Measure this batch's masks before the optimisation step."""
        if batch is None or batch_idx % self.every_n_batches:
            return
        if not isinstance(pl_module, CounterfactualFineTuner):
            raise TypeError(
                f"MaskQualityMonitor needs a CounterfactualFineTuner, got "
                f"{type(pl_module).__name__}"
            )
        if not isinstance(batch, Sequence) or len(batch) < 3:
            raise ValueError(
                "MaskQualityMonitor needs training batches (images, targets, object_masks) "
                "with (B, H, W) object masks, but the batch has no masks; give the "
                "datamodule a masks folder (ImageFolderDataModule(masks_root=...)) or "
                "remove the callback."
            )
        self.measure(pl_module.objective, batch[0], batch[1], batch[2])

    def _accumulate(self, rates: Tensor) -> None:
        keep = ~rates[:, :, 1].isnan().any(0)
        self.sums += rates[:, keep].sum(1).cpu()
        self.count += int(keep.sum())
        self.skipped_empty += int((~keep).sum())

    def measure(
        self, objective: CounterfactualObjective, images: Tensor, targets: Tensor, masks: Tensor
    ) -> Tensor:
        """Measure one batch and add it to the running sums.

        Args:
            objective: The fine-tuner's objective (its student and relevance source).
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            targets: ``(B,)`` class indices.
            masks: ``(B, H, W)`` object masks (bool, or float/int with object > 0.5).

        Returns:
            ``(T, B, 3)`` float64 per-threshold, per-image measures.

        Raises:
            ValueError: If the masks do not match the images' ``(B, H, W)``.
        """
        check_object_masks(images, masks, type(self).__name__)
        relevance = self.relevance if self.relevance is not None else objective.relevance
        if relevance is None:  # a run without a relevance map: measure the default CAM
            relevance = self._fallback = self._fallback or AttentionGradRelevance()
        student = objective.student
        with torch.enable_grad():
            scores = objective.relevance_scores(images, targets, relevance=relevance).detach()
        gt = masks.to(scores.device)
        gt = gt if gt.dtype == torch.bool else gt > 0.5
        out = []
        for masker in self.maskers.values():
            mask = masker(scores, scores.shape[0], student.grid_size, scores.device)
            pixels = patch_mask_to_pixels(mask, student.grid_size, student.patch_size)[:, 0]
            out.append(mask_overlap_rates(pixels, gt))
        rates = torch.stack(out)
        self._accumulate(rates)
        return rates

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the running averages since the start of training."""
        # One tensor, on the module's device (NCCL reduces device tensors only).
        totals = torch.cat([self.sums.flatten(), self.sums.new_tensor([self.count])])
        totals = trainer.strategy.reduce(totals.to(pl_module.device), reduce_op="sum").cpu()
        sums, count = totals[:-1].reshape(self.sums.shape), totals[-1]
        if float(count) == 0:
            return
        means = (sums / count).float()
        for row, t in enumerate(self.maskers):
            for col, name in enumerate(MASK_QUALITY_MEASURES):
                pl_module.log(f"mask_quality/t={t:g}/{name}", means[row, col], rank_zero_only=True)

    def rows(self) -> list[dict[str, float]]:
        """The running averages on this process, one row per threshold.

        Returns:
            ``[{"threshold", "image_mr", "object_mr", "iou", "n"}, ...]`` in decreasing
            threshold order (as in Table 2); empty before any image with an object.
        """
        if self.count == 0:
            return []
        means = self.sums / self.count
        rows = [
            {
                "threshold": t,
                **{name: float(means[i, j]) for j, name in enumerate(MASK_QUALITY_MEASURES)},
                "n": float(self.count),
            }
            for i, t in enumerate(self.maskers)
        ]
        return sorted(rows, key=lambda r: -r["threshold"])
