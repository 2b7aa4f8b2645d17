"""The training loop: the paper's objective and the Lightning module around it.

:mod:`~cfmask.training.objective` (Eq. 2-5 of Xiao et al., CVPR 2023),
:mod:`~cfmask.training.finetuner` (the ``CounterfactualFineTuner`` LightningModule),
:mod:`~cfmask.training.recipe_checks` (checks of a run's options against its recipe),
:mod:`~cfmask.training.head_setup` (classifier-head set-up),
:mod:`~cfmask.training.checkpoints`, :mod:`~cfmask.training.callbacks`,
:mod:`~cfmask.training.visualization` (mask and counterfactual grids) and
:mod:`~cfmask.training.prediction`.
"""
