"""One objective step on real-size architectures of each pooling kind, side by side.

Builds each model with random weights at 224 px, then runs one step of the paper's
objective (Xiao et al., CVPR 2023, arXiv:2303.03052): ``ObjectMasker(0.3)`` from the
student's gradient-weighted attention relevance, ``SingleImageRefiller`` and feature
distillation against the frozen initial model, followed by ``backward``. For each model
it prints the pooling kind the relevance is read at, the masked fraction of patches at
threshold 0.3, the time of one objective forward + backward (after one warm-up step),
and that time relative to the first model's.

open_clip models get a zero-shot head from random class embeddings
(``set_class_names`` with a random weight, which keeps the model's logit scale and,
for SigLIP, its logit bias): SigLIP's tokenizer is a Hugging Face download, which
is not available offline, and the text tower plays no part in the step.

Example::

    python benchmarks/architectures_real_size.py --threads 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cfmask import CounterfactualObjective
from cfmask.backbones import OpenCLIPViT, TimmViT, VisionBackbone
from cfmask.masking import ObjectMasker, SingleImageRefiller
from cfmask.relevance import AttentionGradRelevance

NUM_CLASSES = 10


def _open_clip(name: str) -> Callable[[], VisionBackbone]:
    def build() -> VisionBackbone:
        backbone: OpenCLIPViT = OpenCLIPViT(name, class_names="datamodule")
        names = [f"class {k}" for k in range(NUM_CLASSES)]
        gen = torch.Generator().manual_seed(0)
        unit = F.normalize(torch.randn(NUM_CLASSES, backbone.feature_dim, generator=gen), dim=-1)
        backbone.set_class_names(names, weight=unit * backbone.logit_scale)
        return backbone

    return build


def _timm(name: str) -> Callable[[], VisionBackbone]:
    def build() -> VisionBackbone:
        return TimmViT(name, num_classes=NUM_CLASSES, img_size=224)

    return build


MODELS: dict[str, Callable[[], VisionBackbone]] = {
    "open_clip ViT-B-16-SigLIP": _open_clip("ViT-B-16-SigLIP"),
    "open_clip EVA02-B-16": _open_clip("EVA02-B-16"),
    "timm vit_base_patch16_siglip_224": _timm("vit_base_patch16_siglip_224"),
    "timm vit_medium_patch16_gap_256": _timm("vit_medium_patch16_gap_256"),
}


def main() -> None:
    """Run one objective step per model and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=0.3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = (
        f"{'model':36s} {'pooling':9s} {'tokens':>6s} {'masked@0.3':>10s} {'step_s':>7s} "
        f"{'ratio':>6s}"
    )
    print(f"batch {args.batch_size}, 224 px, random weights, {args.threads} thread(s)")
    print(header)
    first: float | None = None
    for label, build in MODELS.items():
        torch.manual_seed(0)
        backbone = build()
        size = backbone.data_config.image_size
        images = torch.rand(args.batch_size, 3, size, size)
        targets = torch.arange(args.batch_size) % backbone.num_classes
        objective = CounterfactualObjective(
            backbone, ObjectMasker(args.threshold), SingleImageRefiller(), AttentionGradRelevance()
        ).train()
        objective(images, targets).loss.backward()  # warm-up
        backbone.zero_grad()
        start = time.perf_counter()
        result = objective(images, targets)
        result.loss.backward()
        seconds = time.perf_counter() - start
        first = first if first is not None else seconds
        fraction = float(result.mask_fraction) if result.mask_fraction is not None else float("nan")
        tokens = backbone.num_patches + backbone.num_prefix_tokens
        print(
            f"{label:36s} {backbone.token_pooling:9s} {tokens:6d} {fraction:10.3f} "
            f"{seconds:7.2f} {seconds / first:6.2f}",
            flush=True,
        )
        del objective, backbone


if __name__ == "__main__":
    main()
