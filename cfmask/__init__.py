"""cfmask: robust fine-tuning with counterfactual masked images.

Implements Xiao et al., *Masked Images Are Counterfactual Samples for Robust
Fine-tuning*, CVPR 2023 (arXiv:2303.03052) as a PyTorch Lightning library.
"""

__version__ = "0.1.0"

__all__ = ("__version__",)
