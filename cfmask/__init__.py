"""cfmask: robust fine-tuning with counterfactual masked images.

Implements Xiao et al., *Masked Images Are Counterfactual Samples for Robust
Fine-tuning*, CVPR 2023 (arXiv:2303.03052) as a PyTorch Lightning library.
"""

from cfmask.components import Component
from cfmask.finetuner import CounterfactualFineTuner
from cfmask.losses import DistillationLoss, FeatureDistillationLoss, LogitDistillationLoss

__version__ = "0.1.0"

__all__ = (
    "Component",
    "CounterfactualFineTuner",
    "DistillationLoss",
    "FeatureDistillationLoss",
    "LogitDistillationLoss",
    "__version__",
)
