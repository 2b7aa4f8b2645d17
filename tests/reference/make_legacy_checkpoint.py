"""Write ``legacy_tiny.ckpt`` and ``legacy_tiny_outputs.pt``: a checkpoint in today's format.

The checkpoint comes from ``cfmask fit`` on ``tests/conf/tiny_fit.yaml`` (a 2-block,
32-px timm ViT, 3 classes, 2 steps on synthetic data); the outputs are the fitted
student's logits on a fixed seeded batch. ``tests/test_legacy_checkpoint.py`` checks
that later versions of the package load the file and give the same logits.

Run from the repository root (it rewrites both files)::

    python tests/reference/make_legacy_checkpoint.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from cfmask import CounterfactualFineTuner
from cfmask.cli import main

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "conf" / "tiny_fit.yaml"


def fixed_images() -> torch.Tensor:
    """The ``(2, 3, 32, 32)`` batch the stored logits belong to."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(21))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as root:
        main(["fit", "-c", str(CONFIG), f"--trainer.default_root_dir={root}"])
        ckpt = next(Path(root).rglob("last.ckpt"))
        shutil.copy(ckpt, HERE / "legacy_tiny.ckpt")
    model = CounterfactualFineTuner.load_from_checkpoint(HERE / "legacy_tiny.ckpt").eval()
    with torch.no_grad():
        logits = model(fixed_images())
    torch.save({"logits": logits}, HERE / "legacy_tiny_outputs.pt")
    print(f"wrote {HERE / 'legacy_tiny.ckpt'} and logits {tuple(logits.shape)}")
