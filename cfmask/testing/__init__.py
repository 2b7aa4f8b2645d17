"""A small test kit for authors of masker and refiller plugins.

Call these helpers from your own test suite to check that a custom
:class:`~cfmask.masking.Masker` or :class:`~cfmask.masking.Refiller` honours the
contracts the fine-tuner relies on:

* outputs have the documented shapes, dtypes and device;
* the component's :meth:`~cfmask.core.components.Component.config` is plain data and
  rebuilds an equal component through ``importlib`` (this is how checkpoints
  and LightningCLI restore it), and the rebuilt copy behaves identically under
  the same seed;
* :func:`copy.deepcopy` works (Lightning and the fine-tuner copy components);
* inputs are not modified in place.

It also holds the tiny models and the quiet trainer that cfmask's own tests and
benchmarks run on, so a plugin's tests can train on the same few-thousand-parameter
ViTs in a second on a CPU: :func:`tiny_timm_args` (init arguments of a
:class:`~cfmask.backbones.TimmViT`), :func:`tiny_clip_config` and
:func:`tiny_clip_args` (an :class:`~cfmask.backbones.OpenCLIPViT` with a zero-shot
head), :func:`quiet_trainer_settings` and :func:`quiet_trainer`.

Example:
    A plugin's test file::

        import torch
        from cfmask.testing import check_masker, check_refiller

        def test_my_masker():
            mask = check_masker(MyMasker(k=3))
            assert (mask.sum(dim=1) == 3).all()  # plugin-specific semantics

        def test_my_refiller():
            check_refiller(MyRefiller(sigma=2.0))

The helpers raise :class:`AssertionError` with a message naming the broken
contract, so they work under pytest or plain ``python``.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import Tensor

from cfmask.core.components import Component
from cfmask.functional.patches import patch_mask_to_pixels
from cfmask.masking.base import Counterfactual, Masker, Refiller

__all__ = (
    "TINY_CLASS_NAMES",
    "TINY_TEMPLATES",
    "check_component_config",
    "check_masker",
    "check_refiller",
    "fake_scores",
    "quiet_trainer",
    "quiet_trainer_settings",
    "tiny_clip_args",
    "tiny_clip_config",
    "tiny_timm_args",
)

TINY_CLASS_NAMES = ("cat", "dog", "bird")
"""Class names of the tiny CLIP's zero-shot head in :func:`tiny_clip_args`."""

TINY_TEMPLATES = ("a photo of a {}.", "a drawing of a {}.")
"""Prompt templates of the tiny CLIP's zero-shot head in :func:`tiny_clip_args`."""


def tiny_timm_args(
    num_classes: int = 3,
    *,
    img_size: int = 32,
    patch_size: int = 8,
    depth: int = 2,
    embed_dim: int = 32,
    num_heads: int = 2,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Return the init arguments of a tiny :class:`~cfmask.backbones.TimmViT`.

    The defaults give the model most of cfmask's tests train: a 2-block,
    32-wide ViT on 32-px images cut into a 4 x 4 grid of 8-px patches, with
    3 classes (about 32 thousand parameters). Every call returns a new dict,
    so a test may change it freely.

    Args:
        num_classes: Size of the classification head.
        img_size: Side of the square input images, in pixels.
        patch_size: Side of one patch, in pixels.
        depth: Number of transformer blocks.
        embed_dim: Token width.
        num_heads: Attention heads per block.
        **model_kwargs: Further ``timm.create_model`` arguments (for example
            ``drop_rate=0.1`` or ``reg_tokens=2``).

    Returns:
        ``TimmViT`` keyword arguments: ``model_name``, ``num_classes``,
        ``img_size``, ``patch_size`` and ``model_kwargs``.

    Example:
        >>> from cfmask.backbones import TimmViT
        >>> vit = TimmViT(**tiny_timm_args(depth=1))
        >>> vit.num_classes, vit.grid_size
        (3, (4, 4))
    """
    return {
        "model_name": "vit_tiny_patch16_224",
        "num_classes": num_classes,
        "img_size": img_size,
        "patch_size": patch_size,
        "model_kwargs": {
            "depth": depth,
            "embed_dim": embed_dim,
            "num_heads": num_heads,
            **model_kwargs,
        },
    }


def tiny_clip_config(
    embed_dim: int = 32,
    *,
    vision: Mapping[str, Any] | None = None,
    text: Mapping[str, Any] | None = None,
    init_logit_scale: float | None = math.log(100.0),
) -> dict[str, Any]:
    """Return a complete open_clip model config of a tiny CLIP.

    The defaults give a 2-block, 64-wide vision tower with 2 heads on 32-px
    images (8-px patches), a 1-block, 32-wide text tower with 2 heads, a
    77-token context and the full CLIP vocabulary, a 32-dimensional joint
    embedding and a logit scale of 100. The vision tower and a zero-shot head,
    what :class:`~cfmask.backbones.OpenCLIPViT` trains, hold about 116 thousand
    parameters; most of the text tower's 1.6 million are token embeddings. Every
    call returns a new dict.

    Args:
        embed_dim: Width of the joint image-text embedding.
        vision: Entries that replace or extend the vision tower's config
            (``image_size``, ``patch_size``, ``width``, ``layers``,
            ``head_width``, or any other open_clip vision option).
        text: Entries that replace or extend the text tower's config
            (``context_length``, ``vocab_size``, ``width``, ``heads``,
            ``layers``, ...).
        init_logit_scale: Natural log of the initial logit scale, or ``None`` to
            leave open_clip's default.

    Returns:
        A dict for ``OpenCLIPViT(model_cfg=...)`` or ``open_clip.CLIP(**config)``.

    Example:
        >>> cfg = tiny_clip_config(16, vision={"width": 32, "head_width": 16})
        >>> cfg["embed_dim"], cfg["vision_cfg"]["width"], cfg["vision_cfg"]["layers"]
        (16, 32, 2)
    """
    vision_cfg = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32}
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    config: dict[str, Any] = {
        "embed_dim": embed_dim,
        "vision_cfg": {**vision_cfg, **(vision or {})},
        "text_cfg": {**text_cfg, **(text or {})},
    }
    if init_logit_scale is not None:
        config["init_logit_scale"] = init_logit_scale
    return config


def tiny_clip_args(
    text_cache_dir: str | os.PathLike[str] | None = None,
    *,
    model_name: str = "tiny-clip",
    class_names: Sequence[str] | str = TINY_CLASS_NAMES,
    templates: Sequence[str] = TINY_TEMPLATES,
    **config: Any,
) -> dict[str, Any]:
    """Return the init arguments of a tiny :class:`~cfmask.backbones.OpenCLIPViT`.

    The model is :func:`tiny_clip_config` with random weights and a zero-shot
    head built from ``class_names`` and ``templates`` (3 classes and 2
    templates by default). Every call returns a new dict.

    Args:
        text_cache_dir: Where the head's text embeddings are cached (a test's
            ``tmp_path``); ``None`` for the backbone's default.
        model_name: Name the backbone records for the architecture.
        class_names: Class names of the zero-shot head, or ``"datamodule"`` to
            take them from the datamodule when training starts.
        templates: Prompt templates with one ``{}`` for the class name.
        **config: Arguments of :func:`tiny_clip_config` (for example
            ``layers=1``).

    Returns:
        ``OpenCLIPViT`` keyword arguments: ``model_name``, ``model_cfg``,
        ``class_names``, ``templates`` and ``text_cache_dir``.

    Example:
        >>> import tempfile
        >>> from cfmask.backbones import OpenCLIPViT
        >>> OpenCLIPViT(**tiny_clip_args(tempfile.mkdtemp())).num_classes
        3
    """
    return {
        "model_name": model_name,
        "model_cfg": tiny_clip_config(**config),
        "class_names": class_names if isinstance(class_names, str) else list(class_names),
        "templates": list(templates),
        "text_cache_dir": None if text_cache_dir is None else str(text_cache_dir),
    }


def fake_scores(
    batch_size: int,
    num_patches: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Return random relevance scores shaped like a relevance map's output.

    Each row is uniform in ``[0, 1)`` and then divided by its maximum, so it
    contains exactly one ``1.0``, like a max-normalised class activation map.

    Args:
        batch_size: ``B``.
        num_patches: ``N``.
        generator: Optional random generator (for reproducible tests).
        device: Device of the scores; defaults to the generator's device, else CPU.

    Returns:
        ``(B, N)`` float32 scores in ``[0, 1]``.

    Example:
        >>> import torch
        >>> scores = fake_scores(2, 16, torch.Generator().manual_seed(0))
        >>> scores.shape, scores.amax(dim=1).tolist()
        (torch.Size([2, 16]), [1.0, 1.0])
    """
    target = torch.device(device) if device is not None else None
    if target is None:
        target = generator.device if generator is not None else torch.device("cpu")
    raw = torch.rand((batch_size, num_patches), generator=generator, device=target)
    return raw / raw.amax(dim=1, keepdim=True)


def _is_plain(value: object) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _build(config: dict[str, Any]) -> Component:
    module_name, _, qualname = config["class_path"].rpartition(".")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    init_args = {
        k: _build(v) if isinstance(v, dict) and "class_path" in v else v
        for k, v in config["init_args"].items()
    }
    built = target(**init_args)
    if not isinstance(built, Component):
        raise AssertionError(f"{config['class_path']} did not build a Component")
    return built


def check_component_config(component: Component) -> Component:
    """Check that a component's configuration is plain data and rebuilds it.

    Args:
        component: Any :class:`~cfmask.core.components.Component`.

    Returns:
        The component rebuilt from its configuration (the class imported from
        ``class_path`` and called with ``init_args``).

    Raises:
        AssertionError: If the configuration holds non-plain values, cannot be
            imported, rebuilds a component of another class or with a
            different configuration, or :func:`copy.deepcopy` changes it.

    Example:
        >>> from cfmask.masking import RandomMasker
        >>> check_component_config(RandomMasker(ratio=0.25))
        RandomMasker(ratio=0.25, exact_count=False)
    """
    config = component.config()
    if set(config) != {"class_path", "init_args"}:
        raise AssertionError(f"config() must have class_path and init_args, got {config}")
    if not _is_plain(config["init_args"]):
        raise AssertionError(
            f"{type(component).__name__}.config() holds values that are not plain data "
            f"(None, bool, int, float, str, lists, dicts): {config['init_args']!r}; store "
            f"__init__ arguments unchanged so checkpoints and YAML can hold them."
        )
    try:
        rebuilt = _build(config)
    except (ImportError, AttributeError, TypeError) as err:
        raise AssertionError(
            f"could not rebuild {type(component).__name__} from its config {config}: {err}; "
            f"the class must be importable from class_path and accept init_args."
        ) from err
    if type(rebuilt) is not type(component):
        raise AssertionError(f"config rebuilt a {type(rebuilt).__name__}")
    if rebuilt.config() != config:
        raise AssertionError(
            f"rebuilding {type(component).__name__} changed its config: {config} became "
            f"{rebuilt.config()}; __init__ must store each argument unchanged."
        )
    duplicate = copy.deepcopy(component)
    if duplicate.config() != config:
        raise AssertionError(f"copy.deepcopy changed the config of {type(component).__name__}")
    return rebuilt


def _fork_rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


def check_masker(
    masker: Masker,
    batch_size: int = 4,
    grid_size: tuple[int, int] = (3, 5),
    device: torch.device | str = "cpu",
    scores: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """Check a masker's output and configuration contracts.

    Runs the masker (with :func:`fake_scores` when it declares
    ``requires_relevance`` or ``requires_object_masks``, which stand in for
    relevance or object coverage, else with ``scores=None``), checks that the mask is
    a ``(B, N)`` ``torch.bool`` tensor on ``device``, that the scores were not
    modified, and that a copy rebuilt from :meth:`config` returns the same mask
    under the same seed. The global RNG state is restored afterwards.

    Args:
        masker: The masker under test.
        batch_size: ``B``.
        grid_size: Patch grid ``(h, w)``; the default is not square, to catch
            height/width mix-ups.
        device: Device to run on.
        scores: Optional ``(B, h * w)`` relevance to use instead of fake scores.
        seed: Seed for the fake scores and the masker's own random draws.

    Returns:
        The ``(B, N)`` mask, for plugin-specific assertions.

    Raises:
        AssertionError: If a contract is broken.

    Example:
        >>> from cfmask.masking import ObjectMasker
        >>> check_masker(ObjectMasker(threshold=0.3)).shape
        torch.Size([4, 15])
    """
    target = torch.device(device)
    num_patches = grid_size[0] * grid_size[1]
    if scores is None and (type(masker).requires_relevance or type(masker).requires_object_masks):
        generator = torch.Generator(device=target).manual_seed(seed)
        scores = fake_scores(batch_size, num_patches, generator)
    original = scores.clone() if scores is not None else None
    rebuilt = check_component_config(masker)
    with torch.random.fork_rng(devices=_fork_rng_devices(target)):
        torch.manual_seed(seed)
        mask = masker(scores, batch_size, grid_size, target)
        torch.manual_seed(seed)
        again = rebuilt(scores, batch_size, grid_size, target)
    name = type(masker).__name__
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise AssertionError(f"{name} must return a torch.bool tensor, got {mask!r:.80}")
    if tuple(mask.shape) != (batch_size, num_patches):
        raise AssertionError(
            f"{name} returned a mask of shape {tuple(mask.shape)}, expected "
            f"(B, N) = {(batch_size, num_patches)}"
        )
    if mask.device.type != target.type or target.index not in (None, mask.device.index):
        raise AssertionError(f"{name} returned a mask on {mask.device}, expected {target}")
    if scores is not None and original is not None and not torch.equal(scores, original):
        raise AssertionError(f"{name} modified the relevance scores in place")
    if not torch.equal(mask, again):
        raise AssertionError(
            f"{name} rebuilt from its config returned a different mask under the same "
            f"seed; all behaviour must follow from the __init__ arguments."
        )
    return mask


def check_refiller(
    refiller: Refiller,
    batch_size: int = 4,
    grid_size: tuple[int, int] = (3, 5),
    patch_size: int = 4,
    channels: int = 3,
    device: torch.device | str = "cpu",
    mask: Tensor | None = None,
    seed: int = 0,
    unmasked_unchanged: bool = True,
) -> Counterfactual:
    """Check a refiller's output and configuration contracts.

    Builds a random batch in ``[0, 1]`` that requires grad and a random patch
    mask (or uses ``mask``), runs the refiller, and checks that: the result is a
    :class:`~cfmask.masking.Counterfactual`; its images have the input's shape,
    dtype and device, stay in ``[0, 1]``, and carry no gradient; the inputs are
    not modified; ``keep_index`` (if any) is ``(B, K)`` long in ``[0, N)``;
    ``key_mask`` (if any) is ``(B, N)`` bool; unmasked patches keep their
    pixels; and a copy rebuilt from :meth:`config` gives the same result under
    the same seed. The global RNG state is restored afterwards.

    Args:
        refiller: The refiller under test.
        batch_size: ``B``; must be at least ``refiller.min_batch_size``.
        grid_size: Patch grid ``(h, w)``.
        patch_size: Side of one patch, in pixels.
        channels: ``C``.
        device: Device to run on.
        mask: Optional ``(B, h * w)`` bool mask; by default each patch is masked
            with probability 1/2.
        seed: Seed for the fake data and the refiller's own random draws.
        unmasked_unchanged: Check that pixels of unmasked patches are unchanged;
            turn off for refillers that deliberately alter the whole image.

    Returns:
        The :class:`~cfmask.masking.Counterfactual`, for plugin-specific assertions.

    Raises:
        AssertionError: If a contract is broken.
        ValueError: If ``batch_size`` is below the refiller's ``min_batch_size``.

    Example:
        >>> from cfmask.masking import MultiImageRefiller
        >>> check_refiller(MultiImageRefiller()).images.shape
        torch.Size([4, 3, 12, 20])
    """
    if batch_size < refiller.min_batch_size:
        raise ValueError(
            f"{type(refiller).__name__} needs batch_size >= {refiller.min_batch_size}, "
            f"got {batch_size}"
        )
    target = torch.device(device)
    h, w = grid_size
    num_patches = h * w
    generator = torch.Generator(device=target).manual_seed(seed)
    images = torch.rand(
        (batch_size, channels, h * patch_size, w * patch_size),
        generator=generator,
        device=target,
    ).requires_grad_(True)
    if mask is None:
        mask = torch.rand((batch_size, num_patches), generator=generator, device=target) < 0.5
    original_images = images.detach().clone()
    original_mask = mask.clone()
    rebuilt = check_component_config(refiller)
    with torch.random.fork_rng(devices=_fork_rng_devices(target)):
        torch.manual_seed(seed)
        result = refiller(images, mask, patch_size)
        torch.manual_seed(seed)
        again = rebuilt(images, mask, patch_size)
    name = type(refiller).__name__
    if not isinstance(result, Counterfactual):
        raise AssertionError(f"{name} must return a Counterfactual, got {type(result).__name__}")
    out = result.images
    if out.shape != images.shape or out.dtype != images.dtype or out.device != images.device:
        raise AssertionError(
            f"{name} returned images {tuple(out.shape)} {out.dtype} on {out.device}, expected "
            f"{tuple(images.shape)} {images.dtype} on {images.device}"
        )
    if out.requires_grad:
        raise AssertionError(f"{name} must return detached images (the counterfactual is data)")
    if bool((out < 0).any()) or bool((out > 1).any()):
        raise AssertionError(f"{name} returned pixels outside [0, 1]")
    if not torch.equal(images.detach(), original_images) or not torch.equal(mask, original_mask):
        raise AssertionError(f"{name} modified its inputs in place")
    if result.keep_index is not None:
        keep = result.keep_index
        if keep.dtype != torch.long or keep.ndim != 2 or keep.shape[0] != batch_size:
            raise AssertionError(f"{name}: keep_index must be (B, K) long, got {keep!r:.80}")
        if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= num_patches):
            raise AssertionError(f"{name}: keep_index must lie in [0, {num_patches})")
    if result.key_mask is not None:
        key_mask = result.key_mask
        if key_mask.dtype != torch.bool or tuple(key_mask.shape) != (batch_size, num_patches):
            raise AssertionError(
                f"{name}: key_mask must be (B, N) bool, got {tuple(key_mask.shape)} "
                f"{key_mask.dtype}"
            )
    if unmasked_unchanged:
        keep_pixels = ~patch_mask_to_pixels(mask, grid_size, patch_size)
        keep_pixels = keep_pixels.expand_as(out)
        if not torch.equal(out[keep_pixels], original_images[keep_pixels]):
            raise AssertionError(f"{name} changed pixels of patches the mask did not select")
    same = torch.equal(out, again.images)
    for first, second in ((result.keep_index, again.keep_index), (result.key_mask, again.key_mask)):
        same = same and (
            (first is None and second is None)
            or (first is not None and second is not None and torch.equal(first, second))
        )
    if not same:
        raise AssertionError(
            f"{name} rebuilt from its config gave a different result under the same seed; "
            f"all behaviour must follow from the __init__ arguments."
        )
    return result


def quiet_trainer_settings(
    default_root_dir: str | os.PathLike[str], **overrides: Any
) -> dict[str, Any]:
    """Return the :class:`~lightning.pytorch.Trainer` arguments of :func:`quiet_trainer`.

    Plain data, so they also serve as the ``trainer`` section of a CLI
    configuration.

    Args:
        default_root_dir: Where checkpoints go (a test's ``tmp_path``).
        **overrides: Any other :class:`~lightning.pytorch.Trainer` arguments;
            they replace the quiet defaults.

    Returns:
        The keyword arguments.

    Example:
        >>> quiet_trainer_settings("run", max_steps=1)["max_steps"]
        1
    """
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
        "default_root_dir": default_root_dir,
    }
    settings.update(overrides)
    return settings


def quiet_trainer(default_root_dir: str | os.PathLike[str], **overrides: Any) -> Trainer:
    """Return a Lightning :class:`~lightning.pytorch.Trainer` for fast, silent test runs.

    One CPU device, no logger, no progress bar or model summary, no sanity check,
    one validation batch per validation run; ``overrides`` replace any of these
    (for example ``max_steps=2``, ``precision="bf16-mixed"``, ``callbacks=[...]``).
    The arguments are those of :func:`quiet_trainer_settings`.

    Args:
        default_root_dir: Where checkpoints go (a test's ``tmp_path``).
        **overrides: Any other :class:`~lightning.pytorch.Trainer` arguments.

    Returns:
        The trainer.

    Example:
        >>> import tempfile
        >>> quiet_trainer(tempfile.mkdtemp(), max_steps=1).max_steps
        1
    """
    return Trainer(**quiet_trainer_settings(default_root_dir, **overrides))
