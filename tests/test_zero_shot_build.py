"""Building the zero-shot head in length-sorted batches gives the class-major result."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cfmask.backbones.heads import build_zero_shot_weights, length_sorted_batches

VOCAB = {"a": 1, "b": 2, "c": 3, "x": 4, "y": 5, "photo": 6, "of": 7, "big": 8}


def _tokenize(texts: list[str]) -> Tensor:
    """Word ids, zero-padded to 6 positions (0 is padding, as in CLIP's tokenizer)."""
    rows = [[VOCAB[w] for w in t.split()] for t in texts]
    return torch.tensor([r + [0] * (6 - len(r)) for r in rows])


def test_length_sorted_batches_cover_every_row_once_shortest_first() -> None:
    ids = _tokenize(["a", "a b c", "a b", "x", "x y photo of", "b c"])
    batches = length_sorted_batches(ids, 2)
    assert sorted(torch.cat(batches).tolist()) == list(range(6))
    lengths = [[int((ids[i] != 0).sum()) for i in b] for b in batches]
    assert lengths == [[1, 1], [2, 2], [3, 4]]


def test_sorted_build_matches_hand_computed_class_major_weights() -> None:
    classes = ["a", "b c", "x y big"]
    templates = ["{}", "photo of {}", "{} of big"]
    seen: list[int] = []

    def encode(ids: Tensor) -> Tensor:
        # a truncating encoder: only the longest prompt's positions are looked at
        longest = int(((ids != 0).long() * torch.arange(1, 7)).amax())
        seen.append(longest)
        window = ids[:, :longest]
        words = F.one_hot(window, 9).float() * (window != 0).unsqueeze(-1)  # padding adds 0
        return words.sum(1) + 0.5 * ids[:, :1].float()

    weight = build_zero_shot_weights(
        encode, _tokenize, classes, templates, logit_scale=10.0, batch_size=2
    )
    assert seen == sorted(seen)  # batches arrive shortest first
    expected = []
    for name in classes:
        embs = []
        for t in templates:
            words = t.replace("{}", name).split()
            vec = torch.zeros(9)
            for w in words:
                vec[VOCAB[w]] += 1.0
            vec += 0.5 * VOCAB[words[0]]
            embs.append(vec / vec.norm())
        mean = torch.stack(embs).mean(0)
        expected.append(10.0 * mean / mean.norm())
    torch.testing.assert_close(weight, torch.stack(expected))
