"""How results are scored and reported.

:mod:`~cfmask.evaluation.accuracy` (per-set top-1/top-5 accuracy with the
class-subset protocol), :mod:`~cfmask.evaluation.eval_sets` (what each test set
covers), :mod:`~cfmask.evaluation.metrics` (the two together: one metric per set),
:mod:`~cfmask.evaluation.reporting` (result tables and files) and
:mod:`~cfmask.evaluation.plotting` (robustness figures). The layer imports only
:mod:`cfmask.core`; the data modules describe their test sets with it and the
fine-tuner scores with it.
"""
