"""An example third-party masker: replace every other patch in a checkerboard.

Use it without touching cfmask, from any directory where this module is importable:

    cfmask fit -c my_run.yaml --model.masker checkerboard_masker.CheckerboardMasker

or install this folder as a package (see pyproject.toml here) so that its
``cfmask.plugins`` entry point registers the short name ``CheckerboardMasker``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from cfmask.masking import Masker


class CheckerboardMasker(Masker):
    """Mask the patches whose (row + column) parity equals ``phase``.

    Args:
        phase: 0 masks the patch at the top-left corner, 1 leaves it.
    """

    requires_relevance: ClassVar[bool] = False

    def __init__(self, phase: int = 0) -> None:
        super().__init__()
        if phase not in (0, 1):
            raise ValueError(f"phase must be 0 or 1, got {phase}")
        self.phase = phase

    def forward(
        self,
        scores: Tensor | None,
        batch_size: int,
        grid_size: tuple[int, int],
        device: torch.device,
    ) -> Tensor:
        """Return the same ``(B, N)`` checkerboard for every image."""
        h, w = grid_size
        rows = torch.arange(h, device=device)[:, None]
        cols = torch.arange(w, device=device)[None, :]
        board = ((rows + cols) % 2 == self.phase).flatten()
        return board.expand(batch_size, -1).clone()
