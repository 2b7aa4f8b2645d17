"""Pure tensor functions behind the cfmask components."""

from cfmask.functional.masking import (
    keep_index_from_mask,
    multi_image_donors,
    normalize_by_max,
    random_keep_count_mask,
    random_patch_mask,
    refill_from_donors,
    single_image_donors,
    threshold_mask,
)
from cfmask.functional.patches import (
    check_grid,
    check_object_masks,
    check_patch_mask,
    mask_overlap_rates,
    patch_coverage,
    patch_mask_to_pixels,
)
from cfmask.functional.relevance import attention_grad_rollout, attention_rollout, read_relevance

__all__: tuple[str, ...] = (
    "attention_grad_rollout",
    "attention_rollout",
    "check_grid",
    "check_object_masks",
    "check_patch_mask",
    "keep_index_from_mask",
    "mask_overlap_rates",
    "multi_image_donors",
    "normalize_by_max",
    "patch_coverage",
    "patch_mask_to_pixels",
    "read_relevance",
    "random_keep_count_mask",
    "random_patch_mask",
    "refill_from_donors",
    "single_image_donors",
    "threshold_mask",
)
