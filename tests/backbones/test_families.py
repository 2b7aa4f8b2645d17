"""Coverage of every supported architecture family (cfmask.backbones.families.FAMILIES).

Each family's tiny random-weight model is built, its relevance is checked against a
rollout written out here and read at the family's pooling, it trains one objective
step with relevance-driven object masks and one with token-drop random masks (or
refuses token hiding with its reason), and it survives a checkpoint round trip and,
where the target library can load it, ``cfmask export``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import lightning
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from cfmask import CounterfactualFineTuner
from cfmask.backbones import OpenCLIPViT, TimmViT, VisionBackbone
from cfmask.backbones.families import FAMILIES, ArchitectureFamily, architectures_table
from cfmask.masking import (
    AttentionMaskRefiller,
    ObjectMasker,
    RandomMasker,
    SingleImageRefiller,
    TokenDropRefiller,
)
from cfmask.relevance import AttentionGradRelevance, AttentionRolloutRelevance
from cfmask.testing import TINY_CLASS_NAMES, TINY_TEMPLATES
from cfmask.training.objective import CounterfactualObjective
from cfmask.weightspace.export import export_checkpoint

DOCS_PAGE = Path(__file__).parents[2] / "docs" / "architectures.md"


def build(family: ArchitectureFamily, cache: Path) -> VisionBackbone:
    args = copy.deepcopy(family.tiny_args)
    if family.library == "timm":
        return TimmViT(**args)
    return OpenCLIPViT(
        model_name=f"tiny-{family.key}",
        class_names=list(TINY_CLASS_NAMES),
        templates=list(TINY_TEMPLATES),
        text_cache_dir=str(cache),
        **args,
    )


def hand_rollout(probes: list[Tensor], pooling: str, prefix: int) -> Tensor:
    """Abnar & Zuidema's rollout, image by image, read at the pooled output."""
    blocks = probes[:-1] if pooling == "attention" else probes
    out = []
    for b in range(blocks[0].shape[0]):
        t = blocks[0].shape[-1]
        rel = torch.eye(t)
        for attn in blocks:
            mean = attn[b].mean(0)
            mean = mean / mean.sum(-1, keepdim=True)
            rel = (0.5 * torch.eye(t) + 0.5 * mean) @ rel
        if pooling == "cls":
            row = rel[0]
        elif pooling == "mean":
            row = rel[prefix:].mean(0)
        else:
            pool = probes[-1][b].mean(0).mean(0)  # over heads and pooled latents
            pool = torch.cat([torch.zeros(t - pool.shape[0]), pool])
            row = pool @ rel
        row = row[prefix:]
        out.append(row / (row.max() + 1e-8))
    return torch.stack(out)


def _batch(backbone: VisionBackbone) -> tuple[Tensor, Tensor]:
    size = backbone.data_config.image_size
    gen = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, size, size, generator=gen), torch.tensor([0, 1, 2, 0])


def _step(objective: CounterfactualObjective, images: Tensor, targets: Tensor) -> float:
    objective.student.train()
    result = objective(images, targets)
    result.loss.backward()
    grads = [p.grad for p in objective.student.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    objective.student.zero_grad()
    return float(result.loss.detach())


@pytest.mark.parametrize("family", FAMILIES, ids=[f.key for f in FAMILIES])
def test_family(family: ArchitectureFamily, tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = build(family, tmp_path)
    assert backbone.token_pooling == family.pooling
    assert backbone.supports_token_hiding == family.token_hiding
    images, targets = _batch(backbone)

    # relevance: shape and the pooling rule, against the rollout written out above
    scores = AttentionRolloutRelevance()(backbone, images, targets)
    assert scores.shape == (4, backbone.num_patches)
    backbone.eval()
    with torch.no_grad(), backbone.attention_probes() as probes:
        backbone(images)
    torch.testing.assert_close(
        scores, hand_rollout(probes, family.pooling, backbone.num_prefix_tokens)
    )
    grad_scores = AttentionGradRelevance()(backbone, images, targets)
    assert grad_scores.shape == (4, backbone.num_patches) and torch.isfinite(grad_scores).all()

    # one step of the paper's objective: relevance-driven object masks, pixel refill
    objective = CounterfactualObjective(
        backbone, ObjectMasker(0.3), SingleImageRefiller(), AttentionGradRelevance()
    )
    assert torch.isfinite(torch.tensor(_step(objective, images, targets)))

    # one step with token-drop random masks (or a refusal that names the reason)
    if family.token_hiding:
        dropping = CounterfactualObjective(
            backbone, RandomMasker(0.5, exact_count=True), TokenDropRefiller()
        )
        assert torch.isfinite(torch.tensor(_step(dropping, images, targets)))
        backbone.eval()
        n = backbone.num_patches
        keep = torch.stack([torch.randperm(n)[: n // 2] for _ in range(4)])
        hidden = torch.ones(4, n, dtype=torch.bool).scatter_(1, keep, False)
        with torch.no_grad():  # dropping a patch == hiding it as a key, for every pooling
            torch.testing.assert_close(
                backbone.forward_features(images, keep_index=keep),
                backbone.forward_features(images, key_mask=hidden),
                rtol=1e-4,
                atol=1e-5,
            )
    else:
        # refused when the objective is built, naming the refiller and the reason
        with pytest.raises(ValueError, match=r"TokenDropRefiller hides .*relative position bias"):
            CounterfactualObjective(
                backbone, RandomMasker(0.5, exact_count=True), TokenDropRefiller()
            )
        with pytest.raises(ValueError, match="AttentionMaskRefiller hides"):
            CounterfactualObjective(backbone, RandomMasker(0.5), AttentionMaskRefiller())

    # checkpoint save / load
    model = CounterfactualFineTuner(backbone, distillation=[])
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    ckpt = tmp_path / f"{family.key}.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        ckpt,
    )
    loaded = CounterfactualFineTuner.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(loaded(images), expected)

    # cfmask export, loaded by the target library itself
    if family.export:
        _check_export(family, ckpt, tmp_path, images, expected)


def _check_export(
    family: ArchitectureFamily, ckpt: Path, tmp_path: Path, images: Tensor, expected: Tensor
) -> None:
    if family.library == "timm":
        result = export_checkpoint(ckpt, "timm")
        args: dict[str, Any] = family.tiny_args
        model = timm.create_model(
            args["model_name"],
            pretrained=True,
            num_classes=3,
            img_size=args["img_size"],
            patch_size=args["patch_size"],
            pretrained_cfg_overlay={"file": str(result.weights), "num_classes": 3},
            **args["model_kwargs"],
        ).eval()
        cfg = model.pretrained_cfg
        mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            torch.testing.assert_close(model((images - mean) / std), expected)
        return
    stem = f"cfmask-family-{family.key}"
    result = export_checkpoint(ckpt, "open_clip", tmp_path / "out" / f"{stem}.safetensors")
    assert result.config is not None and result.head is not None
    open_clip.add_model_config(result.config)
    clip = open_clip.create_model(stem, pretrained=str(result.weights)).eval()
    head = load_file(str(result.head))
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        features = clip.encode_image((images - mean) / std)
        logits = F.normalize(features, dim=-1) @ head["weight"].T + head["bias"]
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_docs_table_is_generated_from_the_family_list() -> None:
    text = DOCS_PAGE.read_text(encoding="utf-8")
    match = re.search(
        r"<!-- families-table:start -->\n(.*?)<!-- families-table:end -->", text, re.DOTALL
    )
    assert match is not None, f"{DOCS_PAGE} lost its generated-table markers"
    assert match.group(1) == architectures_table(), (
        "docs/architectures.md is out of date: paste the output of "
        "`python -m cfmask.backbones.families` between the markers"
    )
