"""Time to build the zero-shot head with a real CLIP text tower, and what makes it fast.

Builds open_clip's ``ViT-B-32`` (random weights; the text tower's speed does not depend
on them) and encodes the ImageNet prompts, ``open_clip.IMAGENET_CLASSNAMES`` x
``open_clip.OPENAI_IMAGENET_TEMPLATES`` (1,000 x 80 = 80,000 prompts), in one process,
side by side:

- ``full context``: ``clip.encode_text`` on all 77 token positions, prompts in
  class-major order (what a plain loop over classes does);
- ``truncated``: :func:`cfmask.backbones.clip_text.encode_text_truncated` (the context cut to
  the batch's longest prompt, exact for a causal text tower), class-major order;
- ``truncated, length-sorted``: the same encoder on batches of similar length
  (:func:`cfmask.backbones.heads.length_sorted_batches`), what
  :func:`cfmask.backbones.heads.build_zero_shot_weights` does;
- ``cache hit``: :func:`cfmask.backbones.clip_text.class_embeddings` a second time with the
  same model, classes and templates (read from the on-disk cache).

On a CPU the full set takes far too long for a benchmark, so ``--classes N`` encodes
every (1000/N)-th class with all its templates, and ``--full-context-prompts`` limits
the slow full-context variant further. Every variant reports the token positions it
encoded (prompts x the context length of each batch, the unit the text tower's work
is proportional to), the CPU seconds of this process it took (steady on a shared
machine with one thread; the wall time is printed next to it) and, from its measured
rate, an estimate for all 80,000 prompts (the full set's token positions are counted
exactly by tokenising it). The cost of tokenising all 80,000 prompts is measured too.

    python benchmarks/zero_shot_head_build.py --classes 4 --full-context-prompts 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip
import torch
from torch import Tensor

from cfmask.backbones.clip_text import class_embeddings, encode_text_truncated
from cfmask.backbones.heads import length_sorted_batches


def context_positions(ids: Tensor, batches: list[Tensor], truncate: bool) -> int:
    """Token positions a text tower processes for ``batches`` of the rows of ``ids``.

    Args:
        ids: ``(P, L)`` token ids, zero-padded.
        batches: Index tensors of each batch's rows.
        truncate: Whether each batch is cut to its longest prompt (else ``L`` each).

    Returns:
        Sum over batches of rows x context length.
    """
    total = 0
    for rows in batches:
        if truncate:
            positions = torch.arange(1, ids.shape[1] + 1)
            length = int(((ids[rows] != 0).long() * positions).amax())
        else:
            length = ids.shape[1]
        total += len(rows) * length
    return total


def class_major_batches(count: int, batch_size: int) -> list[Tensor]:
    """Consecutive batches over ``count`` prompts in their original (class-major) order."""
    return list(torch.split(torch.arange(count), batch_size))


def time_encoding(
    encode: Callable[[Tensor], Tensor], ids: Tensor, batches: list[Tensor]
) -> tuple[float, float]:
    """Wall and CPU seconds of this process to encode every batch of ``ids`` (no autograd)."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for rows in batches:
            encode(ids[rows])
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    """Run the comparison and print one line per variant."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    p.add_argument("--classes", type=int, default=1000, help="evenly spaced ImageNet classes")
    p.add_argument("--batch-size", type=int, default=256, help="prompts per text-tower call")
    p.add_argument(
        "--full-context-prompts",
        type=int,
        default=256,
        help="prompts (from the start of the subset) for the slow full-context variant",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    names = list(open_clip.IMAGENET_CLASSNAMES)
    step = max(1, len(names) // args.classes)
    subset = names[::step][: args.classes]
    templates = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    tokenizer = open_clip.get_tokenizer(args.model)

    start = time.process_time()
    all_ids = tokenizer([t.replace("{}", n) for n in names for t in templates])
    tokenise_s = time.process_time() - start
    full_sorted = context_positions(all_ids, length_sorted_batches(all_ids, args.batch_size), True)
    full_major = context_positions(
        all_ids, class_major_batches(len(all_ids), args.batch_size), True
    )
    full_untruncated = all_ids.numel()
    print(
        f"{args.model} text tower, {args.threads} thread(s), batch {args.batch_size}; "
        f"tokenising all {len(all_ids)} prompts took {tokenise_s:.1f} CPU s; token positions for "
        f"all of them: {full_untruncated} at 77, {full_major} truncated class-major, "
        f"{full_sorted} truncated length-sorted"
    )

    clip: Any = open_clip.create_model(args.model, pretrained=None)
    clip.visual = None  # only the text tower is needed
    clip.eval()
    ids = tokenizer([t.replace("{}", n) for n in subset for t in templates])
    full_ids = ids[: args.full_context_prompts]
    variants: list[tuple[str, Callable[[Tensor], Tensor], Tensor, list[Tensor], bool, int]] = [
        (
            "full context (77), class-major",
            clip.encode_text,
            full_ids,
            class_major_batches(len(full_ids), args.batch_size),
            False,
            full_untruncated,
        ),
        (
            "truncated, class-major",
            lambda x: encode_text_truncated(clip, x),
            ids,
            class_major_batches(len(ids), args.batch_size),
            True,
            full_major,
        ),
        (
            "truncated, length-sorted",
            lambda x: encode_text_truncated(clip, x),
            ids,
            length_sorted_batches(ids, args.batch_size),
            True,
            full_sorted,
        ),
    ]
    for label, encode, rows_ids, batches, truncate, full_work in variants:
        work = context_positions(rows_ids, batches, truncate)
        wall, seconds = time_encoding(encode, rows_ids, batches)
        estimate = seconds * full_work / work
        print(
            f"  {label:32s} {len(rows_ids):5d} prompts {work:7d} positions {seconds:7.1f} CPU s "
            f"({wall:7.1f} wall s, {len(rows_ids) / seconds:5.1f} prompts per CPU s) -> all "
            f"80,000 prompts ~{estimate:6.0f} CPU s ({estimate / 3600:.2f} h)"
        )

    with tempfile.TemporaryDirectory(prefix="cfmask-head-bench-") as cache:
        settings: dict[str, Any] = {
            "model_name": args.model,
            "model_cfg": None,
            "pretrained": None,
            "quick_gelu": False,
            "class_names": subset,
            "templates": templates,
            "cache_dir": cache,
        }
        start = time.process_time()
        class_embeddings(clip, progress=True, **settings)
        built = time.process_time() - start
        start = time.process_time()
        class_embeddings(clip, **settings)
        hit = time.process_time() - start
    print(
        f"  class_embeddings, {len(subset)} classes x {len(templates)} templates: built in "
        f"{built:.1f} CPU s (tokenising, length-sorted truncated encoding, progress bar), "
        f"cache hit {hit:.2f} CPU s"
    )


if __name__ == "__main__":
    main()
