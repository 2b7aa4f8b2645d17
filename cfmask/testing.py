"""A small test kit for authors of masker and refiller plugins.

Call these helpers from your own test suite to check that a custom
:class:`~cfmask.masking.Masker` or :class:`~cfmask.masking.Refiller` honours the
contracts the fine-tuner relies on:

* outputs have the documented shapes, dtypes and device;
* the component's :meth:`~cfmask.components.Component.config` is plain data and
  rebuilds an equal component through ``importlib`` (this is how checkpoints
  and LightningCLI restore it), and the rebuilt copy behaves identically under
  the same seed;
* :func:`copy.deepcopy` works (Lightning and the fine-tuner copy components);
* inputs are not modified in place.

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
import os
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import Tensor

from cfmask.components import Component
from cfmask.functional.patches import patch_mask_to_pixels
from cfmask.masking.base import Counterfactual, Masker, Refiller

__all__ = (
    "check_component_config",
    "check_masker",
    "check_refiller",
    "fake_scores",
    "quiet_trainer",
)


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
        component: Any :class:`~cfmask.components.Component`.

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


def quiet_trainer(default_root_dir: str | os.PathLike[str], **overrides: Any) -> Trainer:
    """Return a Lightning :class:`~lightning.pytorch.Trainer` for fast, silent test runs.

    One CPU device, no logger, no progress bar or model summary, no sanity check,
    one validation batch per validation run; ``overrides`` replace any of these
    (for example ``max_steps=2``, ``precision="bf16-mixed"``, ``callbacks=[...]``).

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
    return Trainer(**settings)
