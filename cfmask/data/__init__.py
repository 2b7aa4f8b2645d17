"""Data for robust fine-tuning: ImageNet, the five OOD test sets, user folders, metrics.

See ``docs/data.md`` for layouts, folder aliases, the evaluation protocol and
expected image counts.
"""

from cfmask.data.cache import CachedImageDataset, build_cache, open_or_build_cache
from cfmask.data.folder import (
    CorruptImageError,
    DataLayoutError,
    DataLayoutWarning,
    FolderImageDataset,
    TruncatedDatasetWarning,
)
from cfmask.data.folder_module import ImageFolderDataModule
from cfmask.data.imagenet import (
    EXPECTED_COUNTS,
    ImageNet,
    imagenet_a_wnids,
    imagenet_class_names,
    imagenet_r_wnids,
    imagenet_wnids,
)
from cfmask.data.imagenet_module import ImageNetOODDataModule
from cfmask.data.loading import LoaderConfig
from cfmask.data.masks import ObjectMaskError
from cfmask.data.ood import (
    ImageNetA,
    ImageNetR,
    ImageNetSketch,
    ImageNetV2,
    ObjectNet,
    load_objectnet_mapping,
)
from cfmask.data.relevance_cache import IndexedDataset, StaleRelevanceCacheError
from cfmask.data.roots import FOLDER_ALIASES, OOD_SETS, resolve_set_root
from cfmask.data.splits import stratified_split
from cfmask.data.transforms import eval_transform, train_transform, transforms_from_config
from cfmask.evaluation.metrics import (
    EvalSet,
    SubsetAccuracy,
    make_test_metrics,
    ood_average,
    project_logits,
    restrict_logits,
    results_table,
    top1_correct,
    write_results,
)

__all__ = (
    "EXPECTED_COUNTS",
    "FOLDER_ALIASES",
    "OOD_SETS",
    "CachedImageDataset",
    "CorruptImageError",
    "DataLayoutError",
    "DataLayoutWarning",
    "EvalSet",
    "FolderImageDataset",
    "ImageFolderDataModule",
    "ImageNet",
    "ImageNetA",
    "ImageNetOODDataModule",
    "ImageNetR",
    "ImageNetSketch",
    "ImageNetV2",
    "IndexedDataset",
    "LoaderConfig",
    "ObjectMaskError",
    "ObjectNet",
    "StaleRelevanceCacheError",
    "SubsetAccuracy",
    "TruncatedDatasetWarning",
    "build_cache",
    "eval_transform",
    "imagenet_a_wnids",
    "imagenet_class_names",
    "imagenet_r_wnids",
    "imagenet_wnids",
    "load_objectnet_mapping",
    "make_test_metrics",
    "ood_average",
    "open_or_build_cache",
    "project_logits",
    "resolve_set_root",
    "restrict_logits",
    "results_table",
    "stratified_split",
    "top1_correct",
    "train_transform",
    "transforms_from_config",
    "write_results",
)
