"""Attention capture and key masks on open_clip blocks without nn.MultiheadAttention.

open_clip's main branch builds every transformer block with its own batch-first
``Attention`` module (packed ``in_proj_weight``, ``forward(x, k_x=None, v_x=None,
attn_mask=None)``) instead of ``nn.MultiheadAttention``. The installed open_clip 3.x
uses that module in its custom blocks only, so two kinds of model are tested here:

* the installed custom blocks (``block_type="custom"`` and its options), real classes;
* a main-branch-style tower: if the installed ``ResidualAttentionBlock`` already has a
  non-MHA ``attn``, the real one; otherwise each block of a default tower gets an
  ``Attention`` with the MHA's weights and main's block interface (``attention`` calls
  ``self.attn(q_x, k_x=..., v_x=..., attn_mask=...)``), so the function is unchanged.
"""

from __future__ import annotations

import copy
import types
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from open_clip import transformer as oct
from torch import Tensor, nn

from cfmask.backbones import AttentionCaptureError, OpenCLIPViT

HEADS = 2  # width 64 / head_width 32 in cfmask.testing.tiny_clip_config()


def _images(b: int = 3) -> Tensor:
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _perturb(vit: OpenCLIPViT) -> None:
    """Move every weight off its initial value (exercises head scales, norms, ...)."""
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in vit.visual.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _custom(clip_args: dict[str, Any], **options: Any) -> OpenCLIPViT:
    args = copy.deepcopy(clip_args)
    args["model_cfg"]["vision_cfg"].update({"block_type": "custom", **options})
    vit = OpenCLIPViT(**args).eval()
    _perturb(vit)
    return vit


class _MainStyleAttention(oct.Attention):  # type: ignore[misc]
    """open_clip's Attention with the main branch's call signature (self-attention)."""

    def forward(self, x, k_x=None, v_x=None, attn_mask=None):  # type: ignore[override]
        assert (k_x is None or k_x is x) and (v_x is None or v_x is x)
        return super().forward(x, attn_mask=attn_mask)


def _main_block_attention(self, q_x, k_x=None, v_x=None, attn_mask=None):
    k_x = q_x if k_x is None else k_x
    v_x = q_x if v_x is None else v_x
    attn_mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
    return self.attn(q_x, k_x=k_x, v_x=v_x, attn_mask=attn_mask)


def _main_style(vit: OpenCLIPViT) -> OpenCLIPViT:
    out = copy.deepcopy(vit)
    _convert_blocks(out.visual.transformer)
    return out.eval()


def _convert_blocks(transformer: nn.Module) -> None:
    for blk in transformer.resblocks:
        if not isinstance(blk.attn, nn.MultiheadAttention):
            continue  # the installed open_clip already uses the new block
        mha = blk.attn
        width = mha.embed_dim
        new = _MainStyleAttention(width, mha.num_heads)
        with torch.no_grad():
            new.in_proj_weight.copy_(mha.in_proj_weight)
            new.in_proj_bias.copy_(mha.in_proj_bias)
            new.out_proj.load_state_dict(mha.out_proj.state_dict())
        blk.attn = new
        blk.attention = types.MethodType(_main_block_attention, blk)


def _hand_attention(vit: OpenCLIPViT, images: Tensor) -> Tensor:
    """Block 0's softmax(q k^T / sqrt(d)) from the tower's weights, by hand."""
    v = vit.visual
    x = (images - vit.mean_buffer) / vit.std_buffer
    x = v.conv1(x).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x)
    blk = v.transformer.resblocks[0]
    q, k, _ = F.linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, -1)
    b, t, d = q.shape
    q = q.view(b, t, HEADS, d // HEADS).transpose(1, 2)
    k = k.view(b, t, HEADS, d // HEADS).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / (d // HEADS) ** 0.5, dim=-1)


@pytest.mark.parametrize(
    "options",
    [{}, {"qk_norm": True}, {"scale_heads": True, "scale_attn_inner": True, "scale_attn": True}],
    ids=["custom", "qk_norm", "head_scale_inner_norm"],
)
def test_custom_blocks_probe_with_open_clips_own_output(clip_args, options):
    vit = _custom(clip_args, **options)
    attns = [blk.attn for blk in vit.visual.transformer.resblocks]
    assert all(isinstance(a, oct.Attention) for a in attns)
    x = _images()
    with torch.no_grad():
        plain = vit(x)
    with vit.attention_probes() as probes:
        assert all("forward" in a.__dict__ for a in attns)
        probed = vit(x)
    torch.testing.assert_close(probed, plain, rtol=1e-5, atol=1e-5)
    assert [tuple(p.shape) for p in probes] == [(3, HEADS, 17, 17)] * 2
    torch.testing.assert_close(probes[0].sum(-1), torch.ones(3, HEADS, 17))
    grads = torch.autograd.grad(probed[:, 0].sum(), probes)
    assert all(g.abs().sum() > 0 for g in grads)
    assert all("forward" not in a.__dict__ for a in attns)
    if not options:
        torch.testing.assert_close(probes[0], _hand_attention(vit, x), rtol=1e-5, atol=1e-5)


def test_scaled_cosine_probes_follow_the_formula(clip_args):
    vit = _custom(clip_args, scaled_cosine_attn=True)
    x = _images(2)
    with vit.attention_probes() as probes:
        vit(x)
    v = vit.visual
    tokens = (x - vit.mean_buffer) / vit.std_buffer
    tokens = v.conv1(tokens).flatten(2).transpose(1, 2)
    tokens = torch.cat([v.class_embedding.expand(2, 1, -1), tokens], 1) + v.positional_embedding
    blk = v.transformer.resblocks[0]
    q, k, _ = F.linear(
        blk.ln_1(v.ln_pre(tokens)), blk.attn.in_proj_weight, blk.attn.in_proj_bias
    ).chunk(3, -1)
    q = q.view(2, 17, HEADS, -1).transpose(1, 2)
    k = k.view(2, 17, HEADS, -1).transpose(1, 2)
    cos = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
    scale = blk.attn.logit_scale.clamp(max=blk.attn.logit_scale_max).exp()
    torch.testing.assert_close(probes[0], torch.softmax(cos * scale, -1), rtol=1e-5, atol=1e-6)


def _check_key_mask(vit: OpenCLIPViT) -> None:
    """A key-masked forward equals dropping those patches (CLS pooling), with and without probes."""
    x = _images()
    mask = torch.rand(3, 16, generator=torch.Generator().manual_seed(3)) < 0.5
    mask[0] = False
    with torch.no_grad():
        out = vit.forward_features(x, key_mask=mask)
        for i in range(3):
            kept = (~mask[i]).nonzero().flatten()
            alone = vit.forward_features(x[i : i + 1], keep_index=kept[None])
            torch.testing.assert_close(out[i], alone[0], rtol=1e-5, atol=1e-5)
    with vit.attention_probes() as probes:
        torch.testing.assert_close(
            vit.forward_features(x, key_mask=mask), out, rtol=1e-5, atol=1e-5
        )
    hidden = 1 + mask[1].nonzero().flatten()
    assert torch.all(probes[1][1][:, :, hidden] == 0)


def test_custom_blocks_key_mask(clip_args):
    _check_key_mask(_custom(clip_args))


def test_main_branch_style_tower_same_function_and_probes(clip_args):
    reference = OpenCLIPViT(**clip_args).eval()
    _perturb(reference)
    vit = _main_style(reference)
    assert not any(
        isinstance(b.attn, nn.MultiheadAttention) for b in vit.visual.transformer.resblocks
    )
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(vit(x), reference(x), rtol=1e-5, atol=1e-5)
    with reference.attention_probes() as expected, vit.attention_probes() as probes:
        reference(x)
        vit(x)
    assert len(probes) == len(expected) == 2
    for got, want in zip(probes, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    _check_key_mask(vit)


def test_main_branch_style_fused_switch(clip_args):
    vit = _main_style(OpenCLIPViT(**clip_args))
    x = _images()
    with torch.no_grad():
        fused = vit(x)
        vit.set_fused_attention(False)
        assert all("forward" in b.attn.__dict__ for b in vit.visual.transformer.resblocks)
        explicit = vit(x)
        vit.set_fused_attention(True)
        assert all("forward" not in b.attn.__dict__ for b in vit.visual.transformer.resblocks)
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)


def test_cross_attention_and_boolean_masks_are_refused(clip_args):
    vit = _custom(clip_args)
    attn = vit.visual.transformer.resblocks[0].attn
    x = torch.rand(1, 17, 64)
    with vit.attention_probes():
        with pytest.raises(AttentionCaptureError, match="self-attention"):
            attn(x, k_x=torch.rand(1, 17, 64))
        with pytest.raises(AttentionCaptureError, match="float masks"):
            attn(x, attn_mask=torch.zeros(17, 17, dtype=torch.bool))


def test_text_embeddings_through_main_branch_style_blocks(clip_args):
    """The zero-shot head's text path (causal 2-D mask, truncated context) on the new blocks."""
    import open_clip

    from cfmask.backbones.openclip_vit import encode_text_truncated

    torch.manual_seed(0)
    clip = open_clip.CLIP(**copy.deepcopy(clip_args["model_cfg"])).eval()
    converted = copy.deepcopy(clip)
    _convert_blocks(converted.transformer)
    assert not any(
        isinstance(b.attn, nn.MultiheadAttention) for b in converted.transformer.resblocks
    )
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat.", "a dog"])
    with torch.no_grad():
        expected = clip.encode_text(tokens)
        torch.testing.assert_close(
            encode_text_truncated(converted, tokens), expected, rtol=1e-5, atol=1e-5
        )
