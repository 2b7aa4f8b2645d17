"""Token-level helpers shared by the ViT adapters: token dropping and key masking.

These implement the two "no-fill" ways of hiding patches used by the reference code of
Xiao et al. (CVPR 2023, arXiv:2303.03052): dropping patch tokens from the sequence after
the positional embedding (MAE-style), and hiding patch tokens as attention keys from
every query with an additive ``-inf`` mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = (
    "check_keep_index",
    "check_key_mask",
    "gather_tokens",
    "hide_patch_tokens",
    "key_mask_bias",
)


def check_keep_index(keep_index: Tensor, batch_size: int, num_patches: int) -> None:
    """Validate a ``(B, K)`` tensor of patch indices to keep.

    Raises:
        ValueError: If the dtype, shape or range is wrong.
    """
    if keep_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"keep_index must be an integer tensor, got {keep_index.dtype}")
    if keep_index.ndim != 2 or keep_index.shape[0] != batch_size:
        raise ValueError(
            f"keep_index must have shape (B, K) = ({batch_size}, K), got {tuple(keep_index.shape)}"
        )
    if keep_index.numel() and (int(keep_index.min()) < 0 or int(keep_index.max()) >= num_patches):
        raise ValueError(
            f"keep_index values must lie in [0, {num_patches}) (patch indices, prefix tokens "
            f"excluded); got [{int(keep_index.min())}, {int(keep_index.max())}]"
        )


def check_key_mask(key_mask: Tensor, batch_size: int, num_patches: int) -> None:
    """Validate a ``(B, N)`` bool key mask.

    Raises:
        ValueError: If the dtype or shape is wrong.
    """
    if key_mask.dtype != torch.bool:
        raise ValueError(f"key_mask must be a bool tensor (True = hide), got {key_mask.dtype}")
    if tuple(key_mask.shape) != (batch_size, num_patches):
        raise ValueError(
            f"key_mask must have shape (B, N) = ({batch_size}, {num_patches}), "
            f"got {tuple(key_mask.shape)}"
        )


def gather_tokens(tokens: Tensor, keep_index: Tensor, num_prefix_tokens: int) -> Tensor:
    """Keep the prefix tokens and the selected patch tokens.

    Args:
        tokens: ``(B, P + N, D)`` sequence with ``P`` prefix tokens first.
        keep_index: ``(B, K)`` indices into the ``N`` patch tokens.
        num_prefix_tokens: ``P``.

    Returns:
        ``(B, P + K, D)``, patches in the order given by ``keep_index``.
    """
    prefix, patches = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
    index = keep_index.long().unsqueeze(-1).expand(-1, -1, patches.shape[-1])
    return torch.cat([prefix, patches.gather(1, index)], dim=1)


def key_mask_bias(key_mask: Tensor, num_prefix_tokens: int, dtype: torch.dtype) -> Tensor:
    """Turn a patch key mask into an additive attention bias.

    Prefix tokens are never hidden, so every query row keeps at least one finite score.

    Args:
        key_mask: ``(B, N)`` bool, ``True`` = hide that patch as a key.
        num_prefix_tokens: ``P``.
        dtype: Floating dtype of the attention scores.

    Returns:
        ``(B, 1, 1, P + N)`` with ``-inf`` at hidden keys and ``0`` elsewhere.
    """
    b = key_mask.shape[0]
    full = torch.cat(
        [key_mask.new_zeros(b, num_prefix_tokens), key_mask], dim=1
    )  # (B, T), prefix never hidden
    bias = torch.zeros(full.shape, dtype=dtype, device=key_mask.device)
    bias.masked_fill_(full, float("-inf"))
    return bias[:, None, None, :]


def hide_patch_tokens(
    tokens: Tensor,
    keep_index: Tensor | None,
    key_mask: Tensor | None,
    num_patches: int,
    num_prefix_tokens: int,
) -> tuple[Tensor, Tensor | None]:
    """Apply both "no-fill" ways of hiding patches to an embedded token sequence.

    Checks ``keep_index`` and ``key_mask``, drops the patch tokens ``keep_index``
    leaves out, and turns ``key_mask`` into an additive bias over the kept tokens
    (the mask is given over the original patch positions, so it is gathered by
    ``keep_index`` first).

    Args:
        tokens: ``(B, P + N, D)`` sequence after the positional embedding.
        keep_index: Optional ``(B, K)`` indices of the patch tokens to keep.
        key_mask: Optional ``(B, N)`` bool, ``True`` = hide that patch as a key.
        num_patches: ``N``.
        num_prefix_tokens: ``P``.

    Returns:
        The ``(B, P + K, D)`` (or unchanged) tokens and the ``(B, 1, 1, T)`` bias of
        :func:`key_mask_bias`, or ``None`` without ``key_mask``.

    Raises:
        ValueError: If ``keep_index`` or ``key_mask`` is malformed.
    """
    b = tokens.shape[0]
    if keep_index is not None:
        check_keep_index(keep_index, b, num_patches)
        tokens = gather_tokens(tokens, keep_index, num_prefix_tokens)
    bias: Tensor | None = None
    if key_mask is not None:
        check_key_mask(key_mask, b, num_patches)
        if keep_index is not None:
            key_mask = key_mask.gather(1, keep_index.long())
        bias = key_mask_bias(key_mask, num_prefix_tokens, tokens.dtype)
    return tokens, bias
