"""Conditioning and classifier-free guidance as model adapters.

Classifier-free guidance (Ho & Salimans 2022) mixes a conditional and an unconditional
prediction of one network: out = out_u + w·(out_c - out_u). Here both halves run in ONE
batched forward (inputs concatenated along the batch), and w = 1 (purely conditional) and
w = 0 (purely unconditional) skip the other half, so they equal plain conditional or
unconditional sampling exactly.

Conditioning is given as keyword tensors of the network's forward, batch first: for a diffusers
``UNet2DModel`` with ``num_class_embeds`` that is ``class_labels`` (int64 (B,)), for a
``UNet2DConditionModel`` ``encoder_hidden_states`` (B, L, D). Class-conditional bundles
(``ddim.load_pretrained("digits-cond")``) reserve their last class embedding as the null
("no label") class that guidance uses for the unconditional half.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .model_contract import ModelFn, is_diffusers_model, unwrap_output

Kwargs = Mapping[str, torch.Tensor]


def conditional_fn(model: Any, cond: Kwargs) -> ModelFn:
    """``fn(x, t)`` calling ``model(x, t, **cond)`` (diffusers models with return_dict=False)."""
    network = getattr(model, "model", model) if hasattr(model, "schedule") else model
    extra = {"return_dict": False} if is_diffusers_model(network) else {}

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unwrap_output(network(x, t, **cond, **extra))

    return fn


def guided_fn(model: Any, cond: Kwargs, uncond: Kwargs, guidance_scale: float) -> ModelFn:
    """``fn(x, t)`` = out_u + w·(out_c - out_u), one batched forward for both halves.

    Args:
        model: a network accepting the keyword tensors of ``cond``/``uncond``.
        cond, uncond: keyword tensors (batch first, batch B) for the two halves.
        guidance_scale: w >= 0; 1 is purely conditional, 0 purely unconditional.
    """
    if guidance_scale == 1:
        return conditional_fn(model, cond)
    if guidance_scale == 0:
        return conditional_fn(model, uncond)
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
    fn2 = conditional_fn(model, both)
    w = float(guidance_scale)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_c, out_u = fn2(torch.cat([x, x]), torch.cat([t, t])).chunk(2)
        return out_u + w * (out_c - out_u)

    return fn


@dataclass(frozen=True)
class Conditioning:
    """Validated conditioning of one batch: keyword tensors (batch first) for the conditional
    half, optionally for the unconditional half, and the guidance weight (None: no guidance).
    """

    cond: Kwargs
    uncond: Kwargs | None = None
    guidance_scale: float | None = None

    def model_fn(self, model: Any) -> ModelFn:
        """``fn(x, t)`` applying this conditioning (and guidance) to ``model``."""
        if self.guidance_scale is None:
            return conditional_fn(model, self.cond)
        return guided_fn(model, self.cond, self.uncond, self.guidance_scale)

    def rows(self, part: slice) -> Conditioning:
        """The conditioning of samples ``part`` of the batch."""
        uncond = None if self.uncond is None else {k: v[part] for k, v in self.uncond.items()}
        return Conditioning({k: v[part] for k, v in self.cond.items()}, uncond,
                            self.guidance_scale)


def conditioning(
    model: Any,
    batch_size: int,
    device: torch.device,
    *,
    class_labels: Any = None,
    guidance_scale: float | None = None,
    model_kwargs: Kwargs | None = None,
    uncond_kwargs: Kwargs | None = None,
) -> Conditioning | None:
    """The validated :class:`Conditioning` for these options, or None when there are none.

    Validates: a class-conditional model gets labels; labels are integers in
    [0, num_classes) or the null class (unconditional samples), of shape (B,) (or one int for
    all); guidance needs an unconditional half (a null class, or ``uncond_kwargs``); every
    keyword tensor has the batch size B.

    Raises:
        ValueError naming the argument: labels for an unconditional model, none for a
            class-conditional one, labels of the wrong shape or range, guidance without
            conditioning or without an unconditional half, keyword tensors of the wrong batch
            size, mismatched keys, a cross-attention UNet without ``encoder_hidden_states``
            (:func:`check_cross_attention`).
    """
    check_cross_attention(model, model_kwargs, uncond_kwargs)
    num_classes, null = class_info(model)
    if class_labels is None and num_classes is not None and not model_kwargs:
        unconditional = f", or the null class {null} for unconditional samples" if (
            null is not None) else ""
        raise ValueError(f"the model is class-conditional: pass class_labels (one label or one "
                         f"per sample: 0..{num_classes - 1}{unconditional})")
    if class_labels is None and guidance_scale is None and not model_kwargs and not uncond_kwargs:
        return None
    cond = {k: _to(v, device) for k, v in (model_kwargs or {}).items()}
    uncond = ({k: _to(v, device) for k, v in uncond_kwargs.items()}
              if uncond_kwargs is not None else None)
    if class_labels is not None:
        if num_classes is None:
            raise ValueError("class_labels given, but the model is not class-conditional "
                             "(no num_class_embeds in its config)")
        labels = _labels(class_labels, batch_size, num_classes, null, device)
        cond["class_labels"] = labels
        if uncond is None and null is not None:
            uncond = {"class_labels": torch.full_like(labels, null)}
    if guidance_scale is not None:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
            raise TypeError(f"guidance_scale must be a finite number >= 0, got "
                            f"{guidance_scale!r} ({type(guidance_scale).__name__})")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got "
                             f"{guidance_scale!r}")
        if not cond:
            raise ValueError("guidance_scale needs conditioning: pass class_labels (for a "
                             "class-conditional model) or model_kwargs")
        if uncond is None:
            raise ValueError("guidance_scale needs an unconditional half: this model has no "
                             "null class; pass uncond_kwargs")
    for name, kw in (("model_kwargs", cond), ("uncond_kwargs", uncond or {})):
        for k, v in kw.items():
            if not isinstance(v, torch.Tensor) or v.ndim == 0 or v.shape[0] != batch_size:
                raise ValueError(f"{name}[{k!r}] must be a tensor with batch size "
                                 f"{batch_size} first, got "
                                 f"{tuple(v.shape) if isinstance(v, torch.Tensor) else v!r}")
    if uncond is not None and set(uncond) != set(cond):
        raise ValueError(f"uncond_kwargs must have the keys of the conditioning "
                         f"{sorted(cond)}, got {sorted(uncond)}")
    return Conditioning(cond, uncond, None if guidance_scale is None else float(guidance_scale))


def check_cross_attention(model: Any, model_kwargs: Kwargs | None,
                          uncond_kwargs: Kwargs | None) -> None:
    """A cross-attention UNet (diffusers ``UNet2DConditionModel``: its config has
    ``cross_attention_dim``, Stable Diffusion's) must get ``encoder_hidden_states`` (B, L, D),
    D its cross_attention_dim, in ``model_kwargs`` (and ``uncond_kwargs`` when given), before
    any model call; one that needs ``added_cond_kwargs`` (SDXL's ``addition_embed_type``)
    cannot be called through the model contract.

    Raises:
        ValueError: naming the missing keyword or the embedding's wrong shape.
    """
    network = getattr(model, "model", model) if hasattr(model, "schedule") else model
    config = getattr(network, "config", None)
    dim = config.get("cross_attention_dim") if hasattr(config, "get") else None
    if dim is None:
        return
    name = type(network).__name__
    if config.get("addition_embed_type"):
        raise ValueError(f"this {name} has addition_embed_type "
                         f"{config.get('addition_embed_type')!r} (SDXL-style) and needs "
                         "added_cond_kwargs, which ddim does not pass")
    width = f"{dim}" if isinstance(dim, int) else "its cross_attention_dim"
    for what, kw in (("model_kwargs", model_kwargs), ("uncond_kwargs", uncond_kwargs)):
        if kw is None and what == "uncond_kwargs":
            continue
        states = (kw or {}).get("encoder_hidden_states")
        if not isinstance(states, torch.Tensor):
            raise ValueError(
                f"this {name} is conditioned on encoder_hidden_states (B, L, {width}): pass "
                f"{what}={{'encoder_hidden_states': ...}} (for Stable Diffusion the prompt "
                "embeddings of its pipeline's encode_prompt; see docs/latent-diffusion.md)")
        if states.ndim != 3 or (isinstance(dim, int) and states.shape[-1] != dim):
            raise ValueError(f"{what}['encoder_hidden_states'] must have shape (B, L, {width})"
                             f", got {tuple(states.shape)}")


def class_info(model: Any) -> tuple[int | None, int | None]:
    """(number of real classes, null class) of a class-conditional model, else (None, None).

    A bundle may say so itself (``num_classes``, ``null_class``); a diffusers UNet is read by
    :func:`config_classes`.
    """
    if getattr(model, "num_classes", None) is not None:
        return model.num_classes, getattr(model, "null_class", None)
    network = getattr(model, "model", model)
    config = getattr(network, "config", None)
    return config_classes(config) if config is not None and hasattr(config, "get") else (
        None, None)


def config_classes(config: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(number of real classes, null class) of a diffusers UNet config: ``num_class_embeds =
    K`` is taken to mean K-1 classes and the null class K-1 (the convention of the bundled
    ``digits-cond``); (None, None) without class embeddings."""
    k = config.get("num_class_embeds")
    return (k - 1, k - 1) if k else (None, None)


# ---------------------------------------------------------------- one label per sample
NULL_LABEL = "null"  # in a list of labels: the model's null class


def check_label_list(labels: Any, name: str = "class_labels") -> tuple[int | str, ...] | None:
    """``labels`` (one label, or a non-empty sequence of them) as a tuple; a label is an
    integer or the word ``"null"`` (the model's null class, see :func:`resolve_labels`).
    None stays None. Raises TypeError naming ``name`` otherwise."""
    if labels is None:
        return None
    if hasattr(labels, "tolist"):  # a tensor or numpy array (or numpy integer)
        labels = labels.tolist()
    if isinstance(labels, (str, numbers.Integral)) and not isinstance(labels, bool):
        labels = (labels,)
    if isinstance(labels, Sequence) and not isinstance(labels, str) and labels and all(
            label == NULL_LABEL if isinstance(label, str) else
            isinstance(label, numbers.Integral) and not isinstance(label, bool)
            for label in labels):
        return tuple(label if isinstance(label, str) else int(label) for label in labels)
    raise TypeError(f"{name} must be a label or a non-empty list of labels (integers, or "
                    f"{NULL_LABEL!r} for the null class), got {labels!r:.60}")


def resolve_labels(labels: Sequence[int | str], num_classes: int | None, null: int | None,
                   name: str = "class_labels") -> tuple[int, ...]:
    """``labels`` (see :func:`check_label_list`) for a model with ``num_classes`` classes and
    null class ``null`` (:func:`class_info`): the word ``"null"`` becomes ``null``.

    Raises:
        ValueError naming ``name``: the model is not class-conditional, has no null class
        for ``"null"``, or a label lies outside [0, num_classes) plus the null class.
    """
    if num_classes is None:
        raise ValueError(f"{name} given, but the model is not class-conditional")
    if NULL_LABEL in labels and null is None:
        raise ValueError(f"{name}: {NULL_LABEL!r} given, but the model has no null class")
    resolved = tuple(null if label == NULL_LABEL else label for label in labels)
    _check_label_range(torch.tensor(resolved), num_classes, null, name)
    return resolved


def cycled_labels(labels: Sequence[int], start: int, stop: int) -> torch.Tensor:
    """The labels of samples ``start .. stop-1`` of a run: sample i gets
    ``labels[i % len(labels)]`` (so one label is every sample's, and the 10 digits in order
    give balanced classes whatever the batches are). Returns int64 (stop - start,)."""
    index = torch.arange(start, stop) % len(labels)
    return torch.tensor(labels, dtype=torch.int64)[index]


def _labels(class_labels: Any, batch_size: int, num_classes: int, null: int | None,
            device: torch.device) -> torch.Tensor:
    if isinstance(class_labels, numbers.Integral) and not isinstance(class_labels, bool):
        class_labels = [int(class_labels)] * batch_size  # one label (a Python or numpy int)
    elif isinstance(class_labels, torch.Tensor) and class_labels.ndim == 0:
        class_labels = class_labels.expand(batch_size)
    labels = torch.as_tensor(class_labels)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.ndim != 1:
        raise ValueError(f"class_labels must be integers of shape ({batch_size},), got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    if labels.shape[0] != batch_size:
        raise ValueError(f"class_labels must have one label per sample ({batch_size}), got "
                         f"{labels.shape[0]}")
    _check_label_range(labels, num_classes, null, "class_labels")
    return labels.to(device=device, dtype=torch.int64)


def _check_label_range(labels: torch.Tensor, num_classes: int, null: int | None,
                       name: str) -> None:
    top = num_classes if null == num_classes else num_classes - 1  # the null class is a label
    if (labels < 0).any() or (labels > top).any():
        with_null = f" ({null}: the null class, unconditional)" if top == num_classes else ""
        raise ValueError(f"{name} must lie in [0, {top}]{with_null}, got "
                         f"{labels.tolist()[:8]}")


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value
