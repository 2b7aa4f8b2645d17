"""The distillation losses of the counterfactual objective (Xiao et al., CVPR 2023, Eq. 4-5).

The classes live in :mod:`cfmask.losses.distillation`; their ``cfmask.losses.*``
names are the ones configs and checkpoints use as ``class_path``.
"""

from cfmask.losses.distillation import (
    DistillationLoss,
    FeatureDistillationLoss,
    LogitDistillationLoss,
    feature_distillation,
    logit_distillation,
)

__all__ = (
    "DistillationLoss",
    "FeatureDistillationLoss",
    "LogitDistillationLoss",
    "feature_distillation",
    "logit_distillation",
)
