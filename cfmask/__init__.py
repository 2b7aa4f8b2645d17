"""cfmask: robust fine-tuning with counterfactual masked images.

Implements Xiao et al., *Masked Images Are Counterfactual Samples for Robust
Fine-tuning*, CVPR 2023 (arXiv:2303.03052) as a PyTorch Lightning library.

The top-level names are imported on first access, so that ``import cfmask.data``
(or any other light sub-package) does not load the fine-tuner, Lightning's
training stack, timm or open_clip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cfmask import _compat
from cfmask.core.lazy import lazy_attributes

if TYPE_CHECKING:
    from cfmask.core.components import Component
    from cfmask.losses import DistillationLoss, FeatureDistillationLoss, LogitDistillationLoss
    from cfmask.training.finetuner import CounterfactualFineTuner
    from cfmask.training.objective import CounterfactualObjective, ObjectiveResult

#: The version number: its single source (pyproject.toml reads it from here).
__version__ = "0.1.0"

__all__ = (
    "Component",
    "CounterfactualFineTuner",
    "CounterfactualObjective",
    "DistillationLoss",
    "FeatureDistillationLoss",
    "LogitDistillationLoss",
    "ObjectiveResult",
    "__version__",
)

#: Public name → the module that defines it (imported on first access).
_PUBLIC_MODULES = {
    "Component": "cfmask.core.components",
    "CounterfactualFineTuner": "cfmask.training.finetuner",
    "CounterfactualObjective": "cfmask.training.objective",
    "DistillationLoss": "cfmask.losses",
    "FeatureDistillationLoss": "cfmask.losses",
    "LogitDistillationLoss": "cfmask.losses",
    "ObjectiveResult": "cfmask.training.objective",
}


_compat.install()

__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC_MODULES, lambda: globals())
