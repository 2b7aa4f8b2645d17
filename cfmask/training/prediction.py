"""``cfmask predict``: class probabilities and top-k classes, written to a CSV file.

:meth:`CounterfactualFineTuner.predict_step <cfmask.CounterfactualFineTuner.predict_step>`
returns, per batch, the softmax probabilities and the top-k classes;
:class:`PredictionWriter` (added to ``cfmask predict`` as the ``predictions``
option group) writes one row per image::

    set,index,target,top1,top1_prob,top2,top2_prob,...

``set`` is the datamodule's name of the loader (``test_set_names``), ``index`` the
image's position in that loader, ``target`` its label when the batch has one.
Classes are written by name when the datamodule or the backbone has
``class_names``, else by index.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

__all__ = ("PredictionWriter", "class_probabilities", "predict_outputs")


def class_probabilities(logits: Tensor, top_k: int) -> dict[str, Tensor]:
    """Softmax probabilities and the ``top_k`` most probable classes.

    Args:
        logits: ``(B, K)`` logits.
        top_k: Number of classes to rank; capped at ``K``.

    Returns:
        ``probs`` ``(B, K)`` (float32, rows sum to 1), ``top_k_probs`` and
        ``top_k_indices`` ``(B, min(top_k, K))`` in decreasing probability.

    Example:
        >>> import torch
        >>> out = class_probabilities(torch.tensor([[0.0, 2.0, 1.0]]), top_k=2)
        >>> out["top_k_indices"].tolist()
        [[1, 2]]
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    probs = logits.float().softmax(dim=-1)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return {"probs": probs, "top_k_probs": top.values, "top_k_indices": top.indices}


def _class_names(trainer: Trainer, pl_module: LightningModule) -> list[str] | None:
    for owner in (getattr(trainer, "datamodule", None), getattr(pl_module, "student", None)):
        names = getattr(owner, "class_names", None)
        if isinstance(names, Sequence) and not isinstance(names, str) and names:
            return [str(n) for n in names]
    return None


class PredictionWriter(Callback):
    """Write each predicted image's top-k classes and probabilities to a CSV file.

    Args:
        output: CSV file (its folder is created).
        top_k: Classes per image (capped at the number of classes).
        probabilities: Also write every class's probability (columns ``p_<class>``).
    """

    def __init__(
        self, output: str = "predictions.csv", top_k: int = 5, probabilities: bool = False
    ) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.output = output
        self.top_k = top_k
        self.probabilities = probabilities
        self._rows: list[list[Any]] = []
        self._counts: dict[int, int] = {}
        self._names: list[str] | None = None
        self._num_classes = 0

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Set the model's top-k and reset the rows."""
        pl_module.predict_top_k = self.top_k  # type: ignore[assignment]
        self._rows, self._counts = [], {}
        self._names = _class_names(trainer, pl_module)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Collect one row per image of the batch."""
        if not isinstance(outputs, Mapping):
            return
        set_names = list(
            getattr(getattr(trainer, "datamodule", None), "test_set_names", None) or []
        )
        set_name = (
            set_names[dataloader_idx] if dataloader_idx < len(set_names) else str(dataloader_idx)
        )
        probs = outputs["probs"].cpu()
        self._num_classes = int(probs.shape[-1])
        idx, p = outputs["top_k_indices"].cpu(), outputs["top_k_probs"].cpu()
        targets = outputs.get("targets")
        start = self._counts.get(dataloader_idx, 0)
        for i in range(probs.shape[0]):
            row: list[Any] = [set_name, start + i]
            row.append("" if targets is None else self._label(int(targets[i])))
            for j in range(idx.shape[1]):
                row += [self._label(int(idx[i, j])), f"{float(p[i, j]):.6f}"]
            if self.probabilities:
                row += [f"{float(v):.6f}" for v in probs[i]]
            self._rows.append(row)
        self._counts[dataloader_idx] = start + probs.shape[0]

    def _label(self, index: int) -> str:
        if self._names is not None and index < len(self._names):
            return self._names[index]
        return str(index)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the CSV file (rank 0 only)."""
        if not trainer.is_global_zero:
            return
        k = min(self.top_k, self._num_classes) if self._num_classes else self.top_k
        header = ["set", "index", "target"]
        for j in range(1, k + 1):
            header += [f"top{j}", f"top{j}_prob"]
        if self.probabilities:
            header += [f"p_{self._label(c)}" for c in range(self._num_classes)]
        path = Path(self.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(self._rows)
        print(f"wrote {len(self._rows)} predictions to {path}")


def predict_outputs(logits: Tensor, batch: Any, top_k: int) -> dict[str, Tensor]:
    """Outputs of ``predict_step``: :func:`class_probabilities` plus ``targets`` if known.

    Args:
        logits: ``(B, K)`` logits of the batch's images.
        batch: The batch; a second tensor element is taken as the targets.
        top_k: Classes to rank.

    Returns:
        The mapping :class:`PredictionWriter` reads.
    """
    out = class_probabilities(logits, top_k)
    if isinstance(batch, Sequence) and len(batch) > 1 and isinstance(batch[1], Tensor):
        out["targets"] = batch[1]
    return out
