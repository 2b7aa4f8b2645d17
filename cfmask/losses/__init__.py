"""The distillation losses of the counterfactual objective (Xiao et al., CVPR 2023, Eq. 4-5).

The classes live in :mod:`cfmask.losses.distillation`; this package exports every
name of that module's ``__all__``, so the ``cfmask.losses.*`` names that configs
and checkpoints use as ``class_path`` keep working.
"""

from cfmask.losses.distillation import *  # noqa: F403 - the package's public names
from cfmask.losses.distillation import __all__ as __all__
