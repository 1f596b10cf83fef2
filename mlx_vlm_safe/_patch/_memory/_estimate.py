"""Pre-flight estimate: how much memory a generation will need, from the model.

Strictly private. The estimate is built to be a *lower bound* of the real peak
growth (``tests/patch/test_memory.py`` measures how close it is; an overshoot
stays well inside the budget's margin), so that the guard never refuses work
that would fit because of a guess; what it leaves out is caught between
tokens by the in-flight check (``_guard``).

    positions  = prompt tokens + max_tokens         (capped at max_kv_size)
    capacity   = ceil(positions / STEP) * STEP      (KVCache grows by STEP=256)
    kv_bytes   = capacity * sum over layers of 2 * kv_heads * head_dim * dtype bytes
    prefill    = chunk * (vocab + intermediate) * dtype bytes
                 + chunk * prompt tokens * heads * dtype bytes   (attention
                   scores, one layer at a time), chunk = min(prompt,
                   prefill_step_size)
    growth     = (capacity - STEP) * kv_bytes_per_position / layers
                 (the last growth copies one layer at a time: old + new buffer)
    estimate   = kv_bytes + growth + prefill

The architecture is read from the loaded modules, not from a table of model
types: every layer's attention must expose ``n_kv_heads``/``head_dim`` (or
``num_key_value_heads``) and the language model must use the default cache
(no ``make_cache``: sliding windows, rotating or custom caches are unknown).
A quantized KV cache (``kv_bits``) is unknown too. Unknown means no estimate:
the in-flight check alone guards the call, and ``report()`` says so.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from typing import Any

__all__ = [
    "STEP",
    "Architecture",
    "Estimate",
    "architecture",
    "estimate",
    "footprint",
    "held",
]

#: mlx-lm's / mlx-vlm's ``KVCache.step``: the cache grows in chunks of this many
#: positions (the same in every release this library knows).
STEP = 256


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What the estimate needs to know about a model (``reason`` if unknown)."""

    kv_bytes_per_position: int = 0
    layers: int = 0
    heads: int = 0
    dtype_bytes: int = 0
    vocab: int = 0
    intermediate: int = 0
    image_tokens: int = 0
    model_type: str = "?"
    reason: str | None = None  # why no estimate can be made, or None

    @property
    def known(self) -> bool:
        """Whether an estimate can be made."""
        return self.reason is None


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The pre-flight figures of one call, in bytes and positions."""

    total: int
    kv_cache: int
    prefill: int
    prompt_tokens: int
    positions: int
    capacity: int


_cache: list[tuple[weakref.ref[Any], Architecture]] = []


def _int(obj: object, *names: str) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _dtype_bytes(attn: object) -> int | None:
    proj = getattr(attn, "k_proj", None)
    array = getattr(proj, "scales", None)  # quantized weights: compute dtype
    if array is None:
        array = getattr(proj, "weight", None)
    size = getattr(getattr(array, "dtype", None), "size", None)
    return size if isinstance(size, int) and size > 0 else None


def _config_value(config: object, *names: str) -> int | None:
    for source in (config, getattr(config, "text_config", None)):
        if isinstance(source, Mapping):
            for name in names:
                value = source.get(name)
                if isinstance(value, int) and value > 0:
                    return value
        elif source is not None:
            found = _int(source, *names)
            if found is not None:
                return found
    return None


def _image_tokens(config: object) -> int:
    found = _config_value(config, "num_image_tokens", "image_seq_length")
    if found is not None:
        return found
    vision = getattr(config, "vision_config", None)
    size, patch = _int(vision, "image_size"), _int(vision, "patch_size")
    return (size // patch) ** 2 if size and patch else 0


def _inspect(model: Any) -> Architecture:
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", "?"))
    lm = getattr(model, "language_model", None)
    if lm is None:
        return Architecture(model_type=model_type, reason="no language_model")
    if callable(getattr(lm, "make_cache", None)):
        return Architecture(
            model_type=model_type,
            reason="the language model builds its own cache (make_cache)",
        )
    layers = getattr(getattr(lm, "model", None), "layers", None)
    if layers is None:
        layers = getattr(lm, "layers", None)
    if not isinstance(layers, list | tuple) or not layers:
        return Architecture(model_type=model_type, reason="no list of layers")
    per_position = 0
    heads = dtype = 0
    for layer in layers:
        attn = getattr(layer, "self_attn", None) or getattr(layer, "attention", None)
        kv_heads = _int(attn, "n_kv_heads", "num_key_value_heads")
        head_dim = _int(attn, "head_dim")
        size = _dtype_bytes(attn)
        if kv_heads is None or head_dim is None or size is None:
            return Architecture(
                model_type=model_type,
                reason="a layer's attention does not say its kv heads / head_dim",
            )
        per_position += 2 * kv_heads * head_dim * size
        heads = max(heads, _int(attn, "n_heads", "num_heads") or kv_heads)
        dtype = max(dtype, size)
    return Architecture(
        kv_bytes_per_position=per_position,
        layers=len(layers),
        heads=heads,
        dtype_bytes=dtype,
        vocab=_config_value(config, "vocab_size") or 0,
        intermediate=_config_value(config, "intermediate_size") or 0,
        image_tokens=_image_tokens(config),
        model_type=model_type,
    )


def architecture(model: Any) -> Architecture:
    """The model's architecture figures, cached for the last model seen."""
    if _cache:
        ref, found = _cache[0]
        if ref() is model:
            return found
    try:
        found = _inspect(model)
    except Exception as exc:  # an odd model must not fail the call
        found = Architecture(reason=f"could not be read ({exc!r})")
    try:
        ref = weakref.ref(model)
    except TypeError:
        return found
    _cache[:] = [(ref, found)]
    return found


def _prompt_tokens(
    processor: Any, prompt: object, images: int, arch: Architecture
) -> int | None:
    tokenizer = getattr(processor, "tokenizer", processor)
    encode = getattr(tokenizer, "encode", None)
    if not callable(encode):
        return None
    prompts = prompt if isinstance(prompt, list | tuple) else [prompt]
    total = 0
    for text in prompts:
        if not isinstance(text, str):
            return None
        total += len(encode(text))
    # The processor expands each image marker into the image's tokens.
    return total + images * max(arch.image_tokens - 1, 0)


def _count_images(image: object) -> int:
    if image is None:
        return 0
    return len(image) if isinstance(image, list | tuple) else 1


def _why_not(arch: Architecture, kwargs: Mapping[str, Any], max_tokens: object) -> str:
    """Why no estimate can be made for this call ("" if it can)."""
    if not arch.known:
        return f"{arch.model_type}: {arch.reason}"
    if kwargs.get("kv_bits") is not None:
        return "a quantized KV cache (kv_bits) is not estimated"
    if kwargs.get("prompt_cache") is not None:
        return "a caller-supplied prompt_cache is not estimated"
    if not _positive(max_tokens) and max_tokens != 0:
        return "max_tokens unknown"
    return ""


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _prompt_size(
    arch: Architecture, processor: Any, prompt: object, image: object, kwargs: Any
) -> int | str:
    input_ids = kwargs.get("input_ids")
    if input_ids is not None:
        size = getattr(input_ids, "size", None)
        return size if isinstance(size, int) else "input_ids of unknown size"
    try:
        counted = _prompt_tokens(processor, prompt, _count_images(image), arch)
    except Exception as exc:  # tokenizers may reject odd input
        return f"the prompt could not be tokenized ({type(exc).__name__})"
    return "no tokenizer to count the prompt" if counted is None else counted


def estimate(
    arch: Architecture,
    *,
    processor: Any,
    prompt: object,
    image: object,
    kwargs: Mapping[str, Any],
    max_tokens: object,
) -> Estimate | str:
    """The estimate for one call, or why none can be made."""
    why = _why_not(arch, kwargs, max_tokens)
    if why:
        return why
    prompt_tokens = _prompt_size(arch, processor, prompt, image, kwargs)
    if isinstance(prompt_tokens, str):
        return prompt_tokens
    assert isinstance(max_tokens, int)  # checked by _why_not
    positions = prompt_tokens + max_tokens
    max_kv = kwargs.get("max_kv_size")
    if isinstance(max_kv, int) and _positive(max_kv):
        positions = min(positions, max_kv)
    capacity = -(-positions // STEP) * STEP
    kv_cache = capacity * arch.kv_bytes_per_position
    step = kwargs.get("prefill_step_size")
    chunk = prompt_tokens
    if isinstance(step, int) and _positive(step):
        chunk = min(chunk, step)
    size = arch.dtype_bytes
    prefill = chunk * (arch.vocab + arch.intermediate) * size
    prefill += chunk * prompt_tokens * arch.heads * size
    # The last growth concatenates one layer at a time: its old buffer is
    # alive next to the new one.
    growth = (capacity - STEP) * arch.kv_bytes_per_position // max(arch.layers, 1)
    total = kv_cache + max(growth, 0) + prefill
    return Estimate(total, kv_cache, prefill, prompt_tokens, positions, capacity)


def footprint(
    found: Estimate,
    arch: Architecture,
    tokens: int,
    *,
    mlx_figures: bool,
) -> int:
    """What the model says a generation holds after ``tokens`` tokens (bytes).

    Counted the way its reservation was (the guard's ``_reserve``): the KV cache's
    capacity, and against the system's figures its previous capacity too,
    which may stay mapped in mlx's cache while the new one fills.
    """
    step = STEP
    positions = -(-(found.prompt_tokens + tokens) // step) * step
    if not mlx_figures:
        positions += max(positions - step, 0)
    return positions * arch.kv_bytes_per_position


def held(found: Estimate, arch: Architecture, items: int, reserved: int) -> int:
    """What a generation surely holds after ``items`` tokens: its KV cache now.

    A lower bound, on purpose: the ledger lets others in on what a call has
    reserved and not yet taken (``reserved - held``), so ``held`` must never
    exceed what it really holds. Its previous capacity may or may not still
    be mapped (glibc unmaps a freed large block once ``_heap`` fixed its
    threshold; mlx may keep or reuse it): counting it let a second call in
    on room the first still needed, and the first was refused at its last
    growth (0.7.10 under CI load, 2 of 4 calls shortened).
    """
    return min(footprint(found, arch, items, mlx_figures=True), reserved)
