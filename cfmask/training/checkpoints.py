"""Checkpoints: safe reading, and which file holds which step.

Every checkpoint cfmask reads, local or remote, is unpickled with
``torch.load(weights_only=True)``: tensors, numbers, strings and containers of
them, and nothing that can run code. Lightning itself reads a path that starts
with ``http`` with ``weights_only=False`` unless told otherwise, so the two
entry points that reach Lightning's loader are wrapped here:

* :class:`SafeCheckpointIO` wraps a Trainer's
  :class:`~lightning.fabric.plugins.io.checkpoint_io.CheckpointIO`; the
  fine-tuner installs it on its Trainer's strategy in
  :meth:`~cfmask.CounterfactualFineTuner.setup`, before Lightning restores any
  ``ckpt_path`` (``cfmask fit|validate|test --ckpt_path`` and
  ``Trainer.fit(..., ckpt_path=...)``);
* :meth:`cfmask.CounterfactualFineTuner.load_from_checkpoint` passes
  ``weights_only=True`` through :func:`refusing_unsafe_checkpoints`.

A file that holds anything else is refused with :class:`UnsafeCheckpointError`.

:class:`LastAndBestCheckpoint` is the checkpoint callback of ``cfmask fit``: its
``last.ckpt`` always holds the last completed step, and only files chosen on fresh
validation results are named after ``filename`` (``best-…``).

:func:`capture_rng_state` and :func:`restore_rng_state` carry the global random
generators through a checkpoint, so that a resumed run draws the same masks and
refill donors as an uninterrupted one.
"""

from __future__ import annotations

import os
import pickle
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

__all__ = (
    "RNG_KEY",
    "LastAndBestCheckpoint",
    "SafeCheckpointIO",
    "UnsafeCheckpointError",
    "capture_rng_state",
    "install_safe_checkpoint_io",
    "refusing_unsafe_checkpoints",
    "require_weights_only",
    "restore_rng_state",
    "resume_training_loaders",
)

_PathLike = str | Path


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled objects that ``weights_only=True`` does not allow."""


def require_weights_only(weights_only: bool | None) -> bool:
    """Return ``True``; refuse an explicit ``weights_only=False``.

    Args:
        weights_only: The caller's request (``None`` means "default").

    Returns:
        ``True``.

    Raises:
        ValueError: If ``weights_only`` is ``False``.
    """
    if weights_only is False:
        raise ValueError(
            "cfmask loads checkpoints with weights_only=True only: weights_only=False would "
            "unpickle arbitrary objects, and a checkpoint from an untrusted source could run "
            "code. cfmask checkpoints hold plain data and tensors; re-save other files with "
            "torch.save(model.state_dict(), path)."
        )
    return True


def _describe(source: _PathLike | IO[bytes]) -> str:
    return repr(os.fspath(source)) if isinstance(source, str | os.PathLike) else "the stream"


@contextmanager
def refusing_unsafe_checkpoints(source: _PathLike | IO[bytes]) -> Iterator[None]:
    """Turn torch's ``weights_only`` refusal into an :class:`UnsafeCheckpointError`.

    Args:
        source: The checkpoint being read (named in the message).

    Yields:
        Nothing; wrap the ``torch.load``/Lightning call that reads ``source``.

    Raises:
        UnsafeCheckpointError: If the file holds objects other than plain data and
            tensors.
    """
    try:
        yield
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refused to load the checkpoint {_describe(source)}: it holds objects that "
            "weights_only=True does not allow, and unpickling them could run code "
            f"({str(err).splitlines()[0]}). cfmask reads only checkpoints of tensors and "
            "plain data, local or remote; use a checkpoint written by cfmask or a state dict "
            "saved with torch.save(model.state_dict(), path)."
        ) from err


class SafeCheckpointIO(CheckpointIO):
    """A CheckpointIO that reads every checkpoint with ``weights_only=True``.

    Saving and removing are delegated unchanged to the wrapped plugin; loading is
    delegated with ``weights_only=True`` (an explicit ``weights_only=False`` is
    refused), for local files and URLs alike.

    Args:
        inner: The plugin that does the actual reading and writing (Lightning's
            :class:`~lightning.fabric.plugins.io.torch_io.TorchCheckpointIO` by default).
    """

    def __init__(self, inner: CheckpointIO) -> None:
        self.inner = inner

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PathLike, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` through the wrapped plugin."""
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(
        self, path: _PathLike, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Read ``path`` with ``weights_only=True``.

        Raises:
            ValueError: If ``weights_only=False`` is requested.
            UnsafeCheckpointError: If the file holds code-carrying pickles.
        """
        require_weights_only(weights_only)
        kwargs: dict[str, Any] = {"weights_only": True}
        if map_location is not None:
            kwargs["map_location"] = map_location
        with refusing_unsafe_checkpoints(path):
            return self.inner.load_checkpoint(path, **kwargs)

    def remove_checkpoint(self, path: _PathLike) -> None:
        """Remove ``path`` through the wrapped plugin."""
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        """Tear down the wrapped plugin."""
        self.inner.teardown()


def install_safe_checkpoint_io(strategy: Any) -> None:
    """Wrap ``strategy.checkpoint_io`` in a :class:`SafeCheckpointIO` (once).

    Args:
        strategy: A Lightning ``Strategy`` (anything with a ``checkpoint_io`` property).
    """
    current = strategy.checkpoint_io
    if not isinstance(current, SafeCheckpointIO):
        strategy.checkpoint_io = SafeCheckpointIO(current)


class LastAndBestCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose ``last.ckpt`` always holds the last completed step.

    With a ``monitor`` set, Lightning's ``ModelCheckpoint`` rewrites ``last.ckpt``
    only when a top-k file is written in the same step, so with ``save_top_k=1`` it
    goes stale as soon as validation stops improving, and step- or
    exception-triggered saves are named by ``filename`` (``best-…`` here) although
    they were never compared with anything. This subclass keeps Lightning's
    arguments and top-k rule, and changes when each file is written:

    * top-k files (named by ``filename``) are chosen only from fresh validation
      results (or at the end of an epoch without validation), every
      ``every_n_epochs`` epochs, or on every validation run when a step or time
      trigger is set;
    * ``last.ckpt`` (``save_last``) is rewritten at the end of every validation run
      and epoch, at every step trigger (``every_n_train_steps``,
      ``train_time_interval``) and when training ends;
    * a save on an exception (``save_on_exception=True``) goes to
      ``interrupted-epoch=…-step=….ckpt``;
    * with ``save_last="link"``, ``last.ckpt`` links to a file of the same step
      when there is one, and is a real file otherwise.

    Without a ``monitor`` it behaves like ``ModelCheckpoint``, except that a
    ``filename`` starting with ``best-`` loses that prefix (nothing is compared).
    """

    INTERRUPTED_NAME = "interrupted-{epoch}-{step}"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_step_written: int | None = None
        if self.monitor is None and self.filename and self.filename.startswith("best-"):
            # Without a monitor nothing is compared, so nothing may be called best.
            self.filename = self.filename[len("best-") :]
            rank_zero_info(f"no checkpoint monitor: top-k files are named {self.filename!r}")

    def _saving_allowed(self, trainer: pl.Trainer) -> bool:
        return (
            not bool(getattr(trainer, "fast_dev_run", False))
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
        )

    def _write_last(self, trainer: pl.Trainer) -> None:
        if not self.save_last or self._last_step_written == trainer.global_step:
            return
        metrics = self._monitor_candidates(trainer)
        if self.save_last == "link" and self._last_global_step_saved != trainer.global_step:
            # No file of this step to link to: write a real file, never through an
            # old link (that would overwrite the best checkpoint it points to).
            path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
            if trainer.is_global_zero and os.path.islink(path):
                os.remove(path)
            trainer.strategy.barrier()
            self.save_last = True
            try:
                self._save_last_checkpoint(trainer, metrics)
            finally:
                self.save_last = "link"
        else:
            self._save_last_checkpoint(trainer, metrics)
        self._last_step_written = trainer.global_step

    def _step_triggered(self, trainer: pl.Trainer) -> bool:
        every = self._every_n_train_steps
        if every >= 1 and trainer.global_step % every == 0:
            return True
        interval = self._train_time_interval
        if interval is None:
            return False
        now = time.monotonic()
        previous = self._last_time_checked
        elapsed = 0.0 if previous is None else now - previous
        due = bool(trainer.strategy.broadcast(elapsed >= interval.total_seconds()))
        if due:
            self._last_time_checked = now
        return due

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """On a step trigger, rewrite ``last.ckpt`` (no top-k file from stale metrics)."""
        if self.monitor is None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if self._saving_allowed(trainer) and self._step_triggered(trainer):
            self._write_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Without validation, pick top-k here; always rewrite ``last.ckpt``."""
        if self.monitor is None:
            super().on_train_epoch_end(trainer, pl_module)
            return
        self._save_at_epoch_hook(trainer, at_train_epoch_end=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Pick top-k from the fresh validation results; always rewrite ``last.ckpt``."""
        if self.monitor is None:
            super().on_validation_end(trainer, pl_module)
            return
        self._save_at_epoch_hook(trainer, at_train_epoch_end=False)

    def _save_at_epoch_hook(self, trainer: pl.Trainer, at_train_epoch_end: bool) -> None:
        """Pick top-k when this hook is the one that saves on an epoch trigger; rewrite last.

        Top-k is picked at the end of the training epoch when there is no validation
        to wait for (``_should_save_on_train_epoch_end``), else after validation.
        """
        if not self._saving_allowed(trainer):
            return
        due_here = self._should_save_on_train_epoch_end(trainer) == at_train_epoch_end
        if due_here and self._epoch_triggered(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
        self._write_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Make sure ``last.ckpt`` holds the final step."""
        if self.monitor is None:
            super().on_train_end(trainer, pl_module)
            return
        if self._saving_allowed(trainer):
            self._write_last(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """With ``save_on_exception``, save to ``interrupted-…`` (never ``best-…``)."""
        if self.monitor is None:
            super().on_exception(trainer, pl_module, exception)
            return
        if not self._should_save_on_exception(trainer):
            return
        metrics = self._monitor_candidates(trainer)
        filepath = self.format_checkpoint_name(metrics, self.INTERRUPTED_NAME)
        self._save_checkpoint(trainer, filepath)
        rank_zero_info(
            f"{type(exception).__name__} raised at step {trainer.global_step}; saved {filepath}"
        )

    def _epoch_triggered(self, trainer: pl.Trainer) -> bool:
        every = self._every_n_epochs
        if every >= 1:
            return (trainer.current_epoch + 1) % every == 0
        # Step or time triggers set every_n_epochs to 0: compare on every validation run.
        return self._every_n_train_steps >= 1 or self._train_time_interval is not None


RNG_KEY = "cfmask_rng_states"
"""Key of the random-generator states in a fine-tuner checkpoint."""


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators, as plain data.

    Everything that draws at random during training (masking, refill donors,
    augmentation in the main process, dropout) draws from these generators.

    Returns:
        ``{"python", "numpy", "torch", "cuda"}``; loads with ``weights_only=True``.
    """
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global generators to a state from :func:`capture_rng_state`.

    Args:
        state: The captured states (CUDA states are restored when the same number
            of devices is visible).
    """
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def resume_training_loaders(trainer: pl.Trainer) -> None:
    """Put the training loaders back at the position stored in the checkpoint.

    Lightning hands a stateful loader its saved state only when the training
    loader is first built after the loops are restored. A ``configure_optimizers``
    that asks for ``trainer.estimated_stepping_batches`` (as the fine-tuner's
    schedules do) builds it earlier, so the state would never arrive and the
    epoch would start over. Called from ``on_train_start``, this loads the
    pending state into the loaders (including after a checkpoint at the end of
    an epoch, where it moves them to the next epoch) and starts a new iterator
    from there.

    Args:
        trainer: A Trainer that is starting ``fit`` from a checkpoint.
    """
    fit_loop = trainer.fit_loop
    states = getattr(fit_loop, "_combined_loader_states_to_load", None)
    combined = getattr(fit_loop, "_combined_loader", None)
    fetcher = getattr(fit_loop, "_data_fetcher", None)
    if not states or combined is None or fetcher is None:
        return
    combined._load_state_dicts(states)
    fit_loop._combined_loader_states_to_load = []
    iter(fetcher)  # a fresh iterator that starts at the restored position
