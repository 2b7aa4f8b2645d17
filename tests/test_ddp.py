"""A 2-process DDP fit on the CPU takes the step a single process takes on the full batch.

The DDP run is a separate Python process (Lightning launches the second rank by
running the script again); it writes each rank's initial weights, batch and
gradients and the final weights to disk, and the test recomputes the step in this
process on the union of both ranks' batches.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from cfmask.backbones.timm_vit import TimmViT
from cfmask.testing import tiny_timm_args
from cfmask.training.finetuner import CounterfactualFineTuner

from .helpers.ddp_script import run_script

_DDP_SCRIPT = textwrap.dedent(
    """
    import sys

    import lightning.pytorch as pl
    import torch

    from cfmask.backbones.timm_vit import TimmViT
    from cfmask.training.finetuner import CounterfactualFineTuner
    from cfmask.data.synthetic import SyntheticDataModule
    from cfmask.testing import quiet_trainer, tiny_timm_args

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
    backbone = TimmViT(**tiny_timm_args())
    model = CounterfactualFineTuner(backbone, distillation=[], lr=1e-3, schedule="constant")
    trainer = quiet_trainer(
        out,
        max_steps=1,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        enable_checkpointing=False,
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
    run_script(_DDP_SCRIPT, tmp_path, "2")

    init = torch.load(tmp_path / "init_0.pt")
    init_1 = torch.load(tmp_path / "init_1.pt")
    assert init and set(init_1) == set(init)
    for k, v in init_1.items():
        torch.testing.assert_close(v, init[k])  # DDP broadcast rank 0's weights
    (x0, y0), (x1, y1) = (torch.load(tmp_path / f"batch_{r}.pt") for r in (0, 1))
    assert x0.shape[0] == x1.shape[0] == 4  # each rank holds its own half
    assert not torch.equal(x0, x1)
    ddp_grads = [torch.load(tmp_path / f"grads_{r}.pt") for r in (0, 1)]

    # Single process on the union of both ranks' batches: the mean CE over 8 images.
    model = CounterfactualFineTuner(
        TimmViT(**tiny_timm_args()), distillation=[], lr=1e-3, schedule="constant"
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
