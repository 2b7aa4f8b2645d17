"""ImageNet fine-tuning data with the five distribution-shift test sets.

Train on ImageNet's train folder minus a stratified held-out split, select
checkpoints on that split, test on ImageNet val and the OOD sets in the paper's
order (Xiao et al., CVPR 2023, §4.1 "Datasets"). The sets are found with
:mod:`cfmask.data.roots`; their class protocols live with their dataset classes in
``cfmask.data.ood``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cfmask.data.base import ImageDataModuleBase, loader_config_from
from cfmask.data.folder import FolderImageDataset
from cfmask.data.imagenet import ImageNet, imagenet_class_names
from cfmask.data.ood import ImageNetA, ImageNetR, ImageNetSketch, ImageNetV2, ObjectNet
from cfmask.data.roots import OOD_SETS, OODSet, resolve_set_root
from cfmask.data.splits import carve_subset, stratified_split

__all__ = ("ImageNetOODDataModule",)


class ImageNetOODDataModule(ImageDataModuleBase):
    """ImageNet fine-tuning data with the five distribution-shift test sets.

    * train: ImageNet train minus a stratified, seeded held-out split of
      ``val_size`` images (10,240 in the reference; Xiao et al., CVPR 2023,
      arXiv:2303.03052, reference notes §3.7);
    * val: that held-out split (drives best-checkpoint selection);
    * test: ImageNet val (``"imagenet"``) then the chosen ``ood_sets``.

    Sets are found under ``root`` by their usual folder names
    (:data:`FOLDER_ALIASES`, e.g. ``sketch/`` or
    ``imagenetv2-matched-frequency-format-val/``) unless a per-set root is given.
    Nothing is ever downloaded; missing or malformed sets raise
    :class:`~cfmask.data.folder.DataLayoutError`, and sets with a wrong image
    count warn (:class:`~cfmask.data.folder.TruncatedDatasetWarning`).

    Args:
        root: Common data root holding the sets' folders.
        imagenet_root: ImageNet directory (with ``train/`` and ``val/``).
        imagenet_v2_root: ImageNet-V2 matched-frequency directory (folders 0-999).
        imagenet_r_root: ImageNet-R directory.
        imagenet_sketch_root: ImageNet-Sketch directory (1000 wnid folders).
        objectnet_root: ``objectnet-1.0`` directory (``images/`` and ``mappings/``).
        imagenet_a_root: ImageNet-A directory.
        ood_sets: OOD sets to test on, in order; default all five.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (default ``batch_size``).
        num_workers: Loader processes (default ``min(8, CPUs)``).
        image_size: Crop side; take it from the backbone's ``data_config``.
        interpolation: Resize interpolation; from the backbone's ``data_config``.
        augment: Use ``RandomResizedCrop(0.9, 1)`` for training (reference: off).
        val_size: Held-out images taken from train (``int``) or fraction.
        split_seed: Seed of the held-out split (the reference uses the run seed).
        pin_memory: Pin host memory; ``None`` → on when training on a GPU.
        persistent_workers: Keep workers alive between epochs; ``None`` → on GPU.
        skip_corrupt: Skip (and report in :meth:`skipped_images`) undecodable
            images instead of raising.
        cache_dir: If set, cache the evaluation sets' 224-px crops here (see
            :mod:`cfmask.data.cache`).
        cache_train: Also cache the training set (needs ``augment=False``; about
            193 GB at 224 px).
    """

    def __init__(
        self,
        root: str | None = None,
        imagenet_root: str | None = None,
        imagenet_v2_root: str | None = None,
        imagenet_r_root: str | None = None,
        imagenet_sketch_root: str | None = None,
        objectnet_root: str | None = None,
        imagenet_a_root: str | None = None,
        ood_sets: Sequence[OODSet] = OOD_SETS,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        image_size: int = 224,
        interpolation: str = "bicubic",
        augment: bool = False,
        val_size: int = 10_240,
        split_seed: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        skip_corrupt: bool = False,
        cache_dir: str | None = None,
        cache_train: bool = False,
    ) -> None:
        super().__init__(loader_config_from(locals()))
        unknown = [s for s in ood_sets if s not in OOD_SETS]
        if unknown or len(set(ood_sets)) != len(ood_sets):
            raise ValueError(
                f"ood_sets must be distinct names from {list(OOD_SETS)}, got {list(ood_sets)}"
            )
        if cache_train and augment:
            raise ValueError("cache_train needs augment=False (cached crops are deterministic)")
        self.root = root
        self.roots: dict[str, str | None] = {
            "imagenet": imagenet_root,
            "imagenet_v2": imagenet_v2_root,
            "imagenet_r": imagenet_r_root,
            "imagenet_sketch": imagenet_sketch_root,
            "objectnet": objectnet_root,
            "imagenet_a": imagenet_a_root,
        }
        self.ood_sets = list(ood_sets)
        self.val_size = val_size
        self.split_seed = split_seed
        self.cache_train = cache_train
        self.id_name = "imagenet"

    @property
    def num_classes(self) -> int:
        """1000."""
        return 1000

    @property
    def class_names(self) -> list[str]:
        """OpenAI's curated ImageNet class names, in class-index order."""
        return list(imagenet_class_names())

    def set_root(self, name: str) -> Path:
        """Directory used for set ``name`` (see :func:`resolve_set_root`)."""
        return resolve_set_root(name, self.root, self.roots[name])

    def _build_ood(self, name: str) -> FolderImageDataset:
        d = self.set_root(name)
        kw: dict[str, Any] = {
            "transform": self.eval_tf,
            "skip_corrupt": self.skip_corrupt,
            "skip_log": self._skip_log(name),
        }
        classes = {
            "imagenet_v2": ImageNetV2,
            "imagenet_r": ImageNetR,
            "imagenet_sketch": ImageNetSketch,
            "objectnet": ObjectNet,
            "imagenet_a": ImageNetA,
        }
        ds: FolderImageDataset = classes[name](d, **kw)
        return ds

    def setup(self, stage: str | None = None) -> None:
        """Scan the sets needed for ``stage`` (validating layouts and counts)."""
        if stage in (None, "fit", "validate") and self.val_set is None:
            base = self.set_root("imagenet")
            full = ImageNet(
                base,
                "train",
                transform=None,
                skip_corrupt=self.skip_corrupt,
                skip_log=self._skip_log("imagenet_train"),
            )
            full.check_count()
            tr_idx, va_idx = stratified_split(full.class_indices, self.val_size, self.split_seed)
            train = carve_subset(full, "imagenet_train", tr_idx, self.train_tf, full.skip_log)
            val = carve_subset(full, "val", va_idx, self.eval_tf, self._skip_log("val"))
            self.train_set = self._maybe_cache(train) if self.cache_train else train
            self.val_set = self._maybe_cache(val)
            self._register(val)
        if stage in (None, "test", "predict") and not self.test_sets:
            sets: list[FolderImageDataset] = [
                ImageNet(
                    self.set_root("imagenet"),
                    "val",
                    transform=self.eval_tf,
                    skip_corrupt=self.skip_corrupt,
                    skip_log=self._skip_log("imagenet"),
                )
            ]
            sets += [self._build_ood(n) for n in self.ood_sets]
            for i, ds in enumerate(sets):
                ds.check_count()
                self._register(ds, is_id=i == 0)
                self.test_sets[ds.name] = self._maybe_cache(ds)

    def prepare_data(self) -> None:
        """Build the crop caches once per node when ``cache_dir`` is set (no downloads).

        Only the sets of the running stage are scanned and cached (a ``test`` run
        needs neither ImageNet's train folder nor the held-out split); without a
        trainer, every set is.
        """
        if self.cache_dir is None:
            return
        for stage in _stages_to_prepare(getattr(self, "trainer", None)):
            self.setup(stage)


def _stages_to_prepare(trainer: Any) -> tuple[str, ...]:
    """The ``setup`` stages whose sets the trainer's running entry point reads."""
    fn = getattr(getattr(getattr(trainer, "state", None), "fn", None), "value", None)
    stages = {
        "fit": ("fit",),
        "validate": ("validate",),
        "test": ("test",),
        "predict": ("predict",),
    }
    return stages.get(str(fn), ("test", "fit"))
