"""A callback that makes each training step last a while (for kill-and-resume tests)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl


class SlowSteps(pl.Callback):
    """Sleep ``seconds`` after every training step; changes nothing else.

    Args:
        seconds: Pause per step.
    """

    def __init__(self, seconds: float = 0.4) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any) -> None:
        """Pause."""
        time.sleep(self.seconds)
