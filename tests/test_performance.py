"""Performance options: the throughput benchmark, mixed precision, gradient checkpointing,
explicit vs fused attention, and a 2-process DDP fit against the single-process result.

Every optimisation is checked against the straightforward computation (same loss, same
gradients within fp32 tolerance on the CPU); timings live in the benchmark, not here.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cfmask.backbones.base import VisionBackbone
from cfmask.backbones.openclip_vit import OpenCLIPViT
from cfmask.backbones.timm_vit import TimmViT
from cfmask.finetuner import CounterfactualFineTuner
from cfmask.masking.maskers import ObjectMasker, RandomMasker
from cfmask.masking.refillers import (
    AttentionMaskRefiller,
    SingleImageRefiller,
    TokenDropRefiller,
)
from cfmask.relevance.attention import AttentionGradRelevance
from cfmask.synthetic import SyntheticDataModule
from cfmask.testing import quiet_trainer

ROOT = Path(__file__).resolve().parents[1]
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on small, shared CPUs two OpenMP threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _benchmark_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "step_throughput", ROOT / "benchmarks" / "step_throughput.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _timm(cfg: dict[str, Any], **kwargs: Any) -> TimmViT:
    return TimmViT(**{**cfg, **kwargs})


def _clip(tmp_path: Path, **kwargs: Any) -> OpenCLIPViT:
    return OpenCLIPViT(
        "tiny",
        model_cfg=TINY_CLIP_CFG,
        class_names=["cat", "dog", "bird"],
        templates=["a photo of a {}."],
        text_cache_dir=str(tmp_path / "text"),
        **kwargs,
    )


def _batch(n: int = 4) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.arange(n) % 3


def _perturb(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _loss_and_grads(
    model: CounterfactualFineTuner, x: Tensor, y: Tensor
) -> tuple[Tensor, list[Tensor]]:
    torch.manual_seed(11)  # same donors and random masks in every run
    loss = model.objective(x, y).loss
    grads = torch.autograd.grad(loss, list(model.student.parameters()))
    return loss.detach(), list(grads)


def _assert_same(a: tuple[Tensor, list[Tensor]], b: tuple[Tensor, list[Tensor]]) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    for g0, g1 in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------- benchmark
def test_benchmark_smoke_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark_module()
    argv = ["--json", "--models", "tiny,tiny_clip", "--batch-size", "4"]
    argv += ["--steps", "1", "--warmup", "1", "--repeats", "1"]
    results = bench.main(argv)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    keys = {
        "method",
        "model",
        "batch_size",
        "precision",
        "images_per_s",
        "ratio_to_vanilla",
        "peak_mem_mb",
    }
    assert len(lines) == len(results) == 2 * len(bench.METHODS)
    assert all(set(line) == keys for line in lines)
    assert {line["method"] for line in lines} == set(bench.METHODS)
    assert all(line["images_per_s"] > 0 and line["batch_size"] == 4 for line in lines)
    vanilla = [line for line in lines if line["method"] == "vanilla"]
    assert all(line["ratio_to_vanilla"] == 1.0 for line in vanilla)


def test_benchmark_rejects_fp16_on_cpu() -> None:
    bench = _benchmark_module()
    with pytest.raises(SystemExit):
        bench.parse_args(["--precision", "16-mixed"])


# ----------------------------------------------------- explicit vs fused attention
@pytest.mark.parametrize("kind", ["timm", "clip"])
def test_explicit_attention_matches_fused(
    kind: str, tiny_timm_config: dict[str, Any], tmp_path: Path
) -> None:
    vit: TimmViT | OpenCLIPViT = _timm(tiny_timm_config) if kind == "timm" else _clip(tmp_path)
    _perturb(vit)
    x, y = _batch()
    outs = []
    for fused in (True, False):
        vit.set_fused_attention(fused)
        logits = vit(x)
        loss = F.cross_entropy(logits, y)
        outs.append((loss.detach(), list(torch.autograd.grad(loss, list(vit.parameters())))))
    _assert_same(outs[0], outs[1])
    # probes leave the explicit setting as they found it
    with vit.attention_probes() as probes:
        vit(x)
    assert len(probes) == 2
    if isinstance(vit, TimmViT):
        assert all(not blk.attn.fused_attn for blk in vit.model.blocks)
    else:
        assert all("attention" in blk.__dict__ for blk in vit.visual.transformer.resblocks)
    vit.set_fused_attention(True)
    if isinstance(vit, OpenCLIPViT):
        assert all("attention" not in blk.__dict__ for blk in vit.visual.transformer.resblocks)


# ---------------------------------------------------------- gradient checkpointing
def _first_block(vit: VisionBackbone) -> torch.nn.Module:
    if isinstance(vit, TimmViT):
        block: torch.nn.Module = vit.model.blocks[0]
        return block
    assert isinstance(vit, OpenCLIPViT)
    resblock: torch.nn.Module = vit.visual.transformer.resblocks[0]
    return resblock


@pytest.mark.parametrize("kind", ["timm", "clip"])
@pytest.mark.parametrize(
    "method",
    ["vanilla", "object_single", "random_token_drop", "random_key_mask"],
)
def test_grad_checkpointing_gives_same_loss_and_grads(
    kind: str, method: str, tiny_timm_config: dict[str, Any], tmp_path: Path
) -> None:
    def build(checkpointing: bool) -> CounterfactualFineTuner:
        torch.manual_seed(0)
        vit: VisionBackbone
        if kind == "timm":
            vit = _timm(tiny_timm_config, grad_checkpointing=checkpointing)
        else:
            vit = _clip(tmp_path, grad_checkpointing=checkpointing)
        kwargs: dict[str, Any] = {
            "vanilla": {"distillation": []},
            "object_single": {
                "masker": ObjectMasker(0.3),
                "refiller": SingleImageRefiller(allow_self=False),
            },
            "random_token_drop": {
                "masker": RandomMasker(0.5, exact_count=True),
                "refiller": TokenDropRefiller(),
            },
            "random_key_mask": {"masker": RandomMasker(0.5), "refiller": AttentionMaskRefiller()},
        }[method]
        model = CounterfactualFineTuner(vit, **kwargs)
        model.train()
        return model

    plain = build(False)
    _perturb(plain.student)
    ckpt = build(True)
    ckpt.student.load_state_dict(plain.student.state_dict())
    x, y = _batch()

    calls: list[bool] = []
    handle = _first_block(ckpt.student).register_forward_pre_hook(
        lambda *_: calls.append(torch.is_grad_enabled())
    )
    with_ckpt = _loss_and_grads(ckpt, x, y)
    handle.remove()
    _assert_same(_loss_and_grads(plain, x, y), with_ckpt)
    assert ckpt.student.grad_checkpointing
    # the block ran again during the backward pass: activations were recomputed
    forwards = {"vanilla": 1, "object_single": 2, "random_token_drop": 2, "random_key_mask": 2}
    assert len(calls) > forwards[method]


@pytest.mark.parametrize("kind", ["timm", "clip"])
def test_attention_probes_switch_checkpointing_off(
    kind: str, tiny_timm_config: dict[str, Any], tmp_path: Path
) -> None:
    vit: TimmViT | OpenCLIPViT
    if kind == "timm":
        vit = _timm(tiny_timm_config, grad_checkpointing=True)
    else:
        vit = _clip(tmp_path, grad_checkpointing=True)
    x, y = _batch()
    with vit.attention_probes() as probes:
        logits = vit(x)
        grads = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), probes)
        assert len(probes) == 2  # not recorded a second time by a recomputation
    assert all(g.shape == probes[0].shape for g in grads)
    flag = vit.model.grad_checkpointing if isinstance(vit, TimmViT) else None
    if isinstance(vit, OpenCLIPViT):
        flag = vit.visual.transformer.grad_checkpointing
    assert flag is True
    scores_ckpt = AttentionGradRelevance()(vit, x, y)
    plain = copy.deepcopy(vit)
    if isinstance(plain, TimmViT):
        plain.model.set_grad_checkpointing(False)
    else:
        plain.visual.set_grad_checkpointing(False)
    torch.testing.assert_close(scores_ckpt, AttentionGradRelevance()(plain, x, y))


def test_checkpoint_of_model_without_checkpointing_loads(
    tiny_timm_config: dict[str, Any], tmp_path: Path
) -> None:
    model = CounterfactualFineTuner(_timm(tiny_timm_config), distillation=[])
    saved = copy.deepcopy(model.hparams["backbone"])
    del saved["init_args"]["grad_checkpointing"]  # a config written before the option
    other = CounterfactualFineTuner(
        _timm(tiny_timm_config, grad_checkpointing=True), distillation=[]
    )
    other.on_load_checkpoint({"hyper_parameters": {"backbone": saved}})


# ------------------------------------------------------------------ precision
def test_bf16_mixed_fit_step_on_cpu(tiny_timm_config: dict[str, Any], tmp_path: Path) -> None:
    model = CounterfactualFineTuner(
        _timm(tiny_timm_config),
        masker=ObjectMasker(0.3),
        refiller=SingleImageRefiller(),
        lr=1e-3,
        schedule="constant",
    )
    before = copy.deepcopy(model.student.state_dict())
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            losses.append(float(trainer.callback_metrics["train/loss"]))

    trainer = quiet_trainer(
        tmp_path,
        max_steps=1,
        precision="bf16-mixed",
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[Record()],
    )
    trainer.fit(model, datamodule=SyntheticDataModule(batch_size=4, train_size=8))
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    state = model.student.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in state.items())  # fp32 master weights
    assert any(not torch.equal(v, before[k]) for k, v in state.items())


def test_relevance_under_bf16_autocast_stays_close_to_fp32() -> None:
    torch.manual_seed(0)
    vit = TimmViT(
        "vit_tiny_patch16_224",
        num_classes=10,
        img_size=64,
        patch_size=8,
        model_kwargs={"depth": 12, "embed_dim": 96, "num_heads": 3},
    )
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 64, 64, generator=gen), torch.arange(8)
    relevance = AttentionGradRelevance()
    fp32 = relevance(vit, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = relevance(vit, x, y).float()
        shared = relevance.forward_with_outputs(vit, x, y)
    assert torch.isfinite(bf16).all() and bf16.amax(1).allclose(torch.ones(8), atol=1e-2)
    # bf16 keeps 8 mantissa bits; the map moves by about a percent of its range at most
    assert float((bf16 - fp32).abs().max()) < 0.05
    assert float((bf16 - fp32).abs().mean()) < 0.01
    torch.testing.assert_close(shared.scores.float(), bf16)
    masks_agree = ((fp32 > 0.3) == (bf16 > 0.3)).float().mean()
    assert float(masks_agree) > 0.97


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_fit_step_on_gpu(
    precision: str, tiny_timm_config: dict[str, Any], tmp_path: Path
) -> None:
    model = CounterfactualFineTuner(
        _timm(tiny_timm_config), masker=ObjectMasker(0.3), lr=1e-3, schedule="constant"
    )
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    trainer = quiet_trainer(
        tmp_path,
        max_steps=2,
        accelerator="gpu",
        precision=precision,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=SyntheticDataModule(batch_size=4, train_size=8))
    state = {k: v.cpu() for k, v in model.student.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in state.values())
    assert any(not torch.equal(v, before[k]) for k, v in state.items())


# ------------------------------------------------------------------------ DDP
_DDP_SCRIPT = textwrap.dedent(
    """
    import sys

    import lightning.pytorch as pl
    import torch

    from cfmask.backbones.timm_vit import TimmViT
    from cfmask.finetuner import CounterfactualFineTuner
    from cfmask.synthetic import SyntheticDataModule

    out, devices = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)


    class Record(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            rank = trainer.global_rank
            torch.save(pl_module.student.state_dict(), f"{out}/init_{rank}.pt")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rank = trainer.global_rank
            torch.save((batch[0], batch[1]), f"{out}/batch_{rank}.pt")

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads = {
                n: p.grad.detach().clone()
                for n, p in pl_module.student.named_parameters()
                if p.grad is not None
            }
            torch.save(grads, f"{out}/grads_{trainer.global_rank}.pt")


    pl.seed_everything(0)
    backbone = TimmViT(
        "vit_tiny_patch16_224",
        num_classes=3,
        img_size=32,
        patch_size=8,
        model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2},
    )
    model = CounterfactualFineTuner(backbone, distillation=[], lr=1e-3, schedule="constant")
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Record()],
    )
    trainer.fit(model, datamodule=SyntheticDataModule(batch_size=4, train_size=16))
    if trainer.global_rank == 0:
        torch.save(model.student.state_dict(), f"{out}/final.pt")
    """
)


@pytest.mark.slow
def test_two_process_ddp_matches_single_process_full_batch(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    init = torch.load(tmp_path / "init_0.pt")
    for k, v in torch.load(tmp_path / "init_1.pt").items():
        torch.testing.assert_close(v, init[k])  # DDP broadcast rank 0's weights
    (x0, y0), (x1, y1) = (torch.load(tmp_path / f"batch_{r}.pt") for r in (0, 1))
    assert x0.shape[0] == x1.shape[0] == 4  # each rank holds its own half
    assert not torch.equal(x0, x1)
    ddp_grads = [torch.load(tmp_path / f"grads_{r}.pt") for r in (0, 1)]

    # Single process on the union of both ranks' batches: the mean CE over 8 images.
    model = CounterfactualFineTuner(
        TimmViT(
            "vit_tiny_patch16_224",
            num_classes=3,
            img_size=32,
            patch_size=8,
            model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2},
        ),
        distillation=[],
        lr=1e-3,
        schedule="constant",
    )
    model.student.load_state_dict(init)
    model.train()
    x, y = torch.cat([x0, x1]), torch.cat([y0, y1])
    loss = model.objective(x, y).loss
    names = [n for n, _ in model.student.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in model.student.named_parameters()])
    for name, g in zip(names, grads, strict=True):
        for rank_grads in ddp_grads:  # all-reduced: identical on both ranks
            torch.testing.assert_close(rank_grads[name], g, rtol=1e-4, atol=1e-7)

    # One AdamW step with global-norm clipping at 1.0 on the full-batch gradient. Adam's
    # first step is about lr * g / (|g| + eps), so parameters whose gradient is near eps
    # amplify the rounding differences of the all-reduce: compare to 1% of lr there.
    params = [p for _, p in model.student.named_parameters()]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1).step()
    final = torch.load(tmp_path / "final.pt")
    for name, value in model.student.state_dict().items():
        torch.testing.assert_close(final[name], value, rtol=1e-4, atol=1e-5)
