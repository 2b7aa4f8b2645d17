"""Zero-shot classification heads built from CLIP text embeddings.

The head follows WiSE-FT (Wortsman et al., CVPR 2022) and the reference code of
Xiao et al. (CVPR 2023, arXiv:2303.03052): for each class, every prompt
("a photo of a {}.") is encoded by the text tower and L2-normalised; the prompt
embeddings are averaged and the average is normalised again; the class rows are
stacked and scaled by the CLIP logit scale (100 for OpenAI CLIP). The head L2-normalises
the image feature and applies this linear map with a zero bias, so its initial logits are
the model's zero-shot logits. It is trained together with the image tower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ("ZeroShotHead", "build_zero_shot_weights")


class ZeroShotHead(nn.Module):
    """Cosine classifier: ``logits = W (f / ||f||) + b``.

    Args:
        weight: ``(K, D)`` initial weight, usually from :func:`build_zero_shot_weights`.
        bias: Optional ``(K,)`` initial bias; zeros when ``None``.

    Example:
        >>> head = ZeroShotHead(100 * torch.eye(3, 4))
        >>> head(torch.tensor([[2.0, 0.0, 0.0, 0.0]]))
        tensor([[100.,   0.,   0.]], grad_fn=<AddmmBackward0>)
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"weight must be (K, D), got shape {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight.detach().clone().float())
        init_bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().clone()
        self.bias = nn.Parameter(init_bias.float())

    @property
    def in_features(self) -> int:
        """Feature dimension ``D``."""
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        """Number of classes ``K``."""
        return int(self.weight.shape[0])

    def forward(self, features: Tensor) -> Tensor:
        """Map ``(B, D)`` features to ``(B, K)`` logits (features are L2-normalised first)."""
        return F.linear(F.normalize(features, dim=-1), self.weight, self.bias)

    def extra_repr(self) -> str:
        """Show the head's size in ``repr``."""
        return f"in_features={self.in_features}, out_features={self.out_features}"


def build_zero_shot_weights(
    text_encoder: Callable[[Tensor], Tensor],
    tokenizer: Callable[[list[str]], Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    logit_scale: float = 100.0,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """Build the zero-shot head weight from class names and prompt templates.

    Row ``k`` is ``logit_scale * normalise(mean_t normalise(text_encoder(t(k))))``.

    Args:
        text_encoder: Maps ``(P, L)`` token ids to ``(P, D)`` text embeddings.
        tokenizer: Maps a list of ``P`` strings to ``(P, L)`` token ids.
        class_names: ``K`` class names.
        templates: Prompt templates, each containing one ``"{}"`` placeholder.
        logit_scale: Factor applied to the unit class embeddings (CLIP's
            ``logit_scale.exp()``, 100 for OpenAI CLIP).
        batch_size: Prompts per text-encoder call.
        device: Device the token ids are moved to before encoding (the text
            encoder's); ``None`` leaves them where the tokenizer puts them.
        progress: Show a progress bar (rich, on stderr) over the prompt batches.

    Returns:
        ``(K, D)`` float weight, on the CPU.

    Raises:
        ValueError: If a list is empty or a template has no ``"{}"``.

    Example:
        >>> vocab = {"a": 0, "b": 1, "x": 2, "y": 3}
        >>> tok = lambda texts: torch.tensor([[vocab[w] for w in t.split()] for t in texts])
        >>> enc = lambda ids: F.one_hot(ids, 4).float().sum(1)
        >>> build_zero_shot_weights(enc, tok, ["a", "b"], ["{} x", "{} y"], logit_scale=1.0)
        tensor([[0.8165, 0.0000, 0.4082, 0.4082],
                [0.0000, 0.8165, 0.4082, 0.4082]])
    """
    if not class_names:
        raise ValueError("class_names is empty; give at least one class name")
    if not templates:
        raise ValueError("templates is empty; give at least one prompt template such as 'a {}.'")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"every template needs a '{{}}' placeholder for the class name: {bad}")
    prompts = [t.replace("{}", name) for name in class_names for t in templates]
    chunks = []
    starts = range(0, len(prompts), batch_size)
    with _progress(progress, len(starts), len(class_names)) as advance, torch.no_grad():
        for start in starts:
            ids = tokenizer(prompts[start : start + batch_size])
            emb = text_encoder(ids if device is None else ids.to(device))
            chunks.append(F.normalize(emb.float(), dim=-1).cpu())
            advance()
    per_prompt = torch.cat(chunks).view(len(class_names), len(templates), -1)
    weight = F.normalize(per_prompt.mean(dim=1), dim=-1)
    return weight * logit_scale


@contextmanager
def _progress(show: bool, steps: int, num_classes: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar over ``steps`` text-encoder calls, or a no-op."""
    if not show:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    # on stderr, so that programs printing results to stdout (JSON lines) stay parseable
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"zero-shot head: {num_classes} classes", total=steps)
        yield lambda: bar.advance(task)
