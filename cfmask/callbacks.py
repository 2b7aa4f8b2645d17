"""Lightning callbacks shipped with cfmask."""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from torch import Tensor

from cfmask.reporting import results_table, write_results

__all__ = ("CounterfactualImageLogger", "TestResultsReport")


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

    The picture (:func:`~cfmask.visualization.counterfactual_grid`) has one column per
    image of a fixed batch (the first ``num_images`` images of the first training
    batch, with their object masks when the batch carries them) and one row each for
    the images, their relevance maps (when the fine-tuner has a relevance map), the
    masked patches and the counterfactual images, computed with the model as it is
    at that step by the fine-tuner's
    :class:`~cfmask.objective.CounterfactualObjective` (its relevance map and
    :meth:`~cfmask.objective.CounterfactualObjective.make_counterfactual`). It is
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
        from cfmask.finetuner import CounterfactualFineTuner
        from cfmask.objective import INITIAL_TEACHER
        from cfmask.visualization import counterfactual_grid

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
                source = (
                    student
                    if objective.relevance_source == "student"
                    else objective.teachers[INITIAL_TEACHER]
                )
                scores = objective.relevance(source, images, targets)
            object_masks = (
                None if self._object_masks is None else self._object_masks.to(pl_module.device)
            )
            cf, mask = objective.make_counterfactual(
                images, targets, scores=scores, object_masks=object_masks
            )
        return counterfactual_grid(images, mask, cf, grid_size, patch_size, scores=scores)
