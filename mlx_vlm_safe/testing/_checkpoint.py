"""Build a tiny random-weight PaliGemma checkpoint that real mlx-vlm can run.

Why this exists: there is no model hub in CI or offline, yet the only honest test
of a wrapper around ``mlx_vlm.generate()`` is the real ``mlx_vlm.load()`` and the
real ``generate()``. The model itself is in ``_tiny_model``; this module writes
it to a cache folder once, atomically, and hands out the image and prompt.

Heavy imports (mlx, numpy, tokenizers, PIL) happen inside the functions, so
``import mlx_vlm_safe.testing`` stays cheap.
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

from ._tiny_model import TEXT, write_model_files

__all__ = [
    "FORMAT_VERSION",
    "build_tiny_checkpoint",
    "default_cache_dir",
    "tiny_image",
    "tiny_image_path",
    "tiny_prompt",
]

#: Bump when anything written by :func:`build_tiny_checkpoint` changes, so cached
#: checkpoints built by an older version of this module are not reused.
FORMAT_VERSION = 1

_MARKER = ".mlx_vlm_safe_complete.json"
_DTYPES = ("float32", "float16", "bfloat16")


_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.jinja",
)


def default_cache_dir() -> pathlib.Path:
    """Return the per-user cache directory used when no path is given.

    Why: building takes about a second (mostly BPE training and imports), so
    test suites share one copy per user instead of rebuilding per test. The
    order is ``$MLX_VLM_SAFE_CACHE``, ``$XDG_CACHE_HOME/mlx_vlm_safe``, then
    ``~/.cache/mlx_vlm_safe``; the directory is not created here.
    """
    explicit = os.environ.get("MLX_VLM_SAFE_CACHE")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "mlx_vlm_safe"


def _checkpoint_name(seed: int, dtype: str, text: Mapping[str, int]) -> str:
    name = f"tiny-paligemma-v{FORMAT_VERSION}-s{seed}-{dtype}"
    if dict(text) == TEXT:
        return name
    digest = hashlib.sha256(json.dumps(dict(text), sort_keys=True).encode())
    return f"{name}-t{digest.hexdigest()[:10]}"


def _marker_payload(seed: int, dtype: str, text: Mapping[str, int]) -> str:
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "dtype": dtype,
    }
    if dict(text) != TEXT:
        info["text"] = dict(text)
    return json.dumps(info, sort_keys=True) + "\n"


def _is_complete(
    path: pathlib.Path, seed: int, dtype: str, text: Mapping[str, int]
) -> bool:
    try:
        marker = (path / _MARKER).read_text(encoding="utf-8")
    except OSError:
        return False
    if marker != _marker_payload(seed, dtype, text):
        return False
    return all((path / name).is_file() for name in _FILES)


def _owned_by_us(path: pathlib.Path) -> bool:
    """Return True if ``path`` may be replaced: ours, or empty/only our files."""
    if (path / _MARKER).exists():
        return True
    known = {*_FILES, _MARKER}
    return all(entry.name in known for entry in path.iterdir())


def _write_checkpoint(
    directory: pathlib.Path, seed: int, dtype: str, text: Mapping[str, int]
) -> None:
    write_model_files(directory, seed, dtype, text)
    # Written last: its presence means every other file is complete.
    (directory / _MARKER).write_text(
        _marker_payload(seed, dtype, text), encoding="utf-8"
    )


def build_tiny_checkpoint(
    path: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    dtype: str = "float32",
    force: bool = False,
    text_config: Mapping[str, int] | None = None,
) -> pathlib.Path:
    """Write a ~0.5 MB random-weight PaliGemma checkpoint and return its path.

    Why: tests of code around ``mlx_vlm.generate()`` should run the real
    ``mlx_vlm.load()`` and ``generate()``, offline and fast. The checkpoint is a
    SigLIP vision tower (32x32 images, 16 image tokens) + a 2-layer Gemma
    (hidden 64, vocab 512) + a linear projector, with a byte-level BPE trained
    on synthetic text: it loads and generates fast on CPU.

    Greedy decoding never emits EOS (the output rows of the special tokens and
    of the 256 single-byte tokens are zero), so every call runs exactly to
    ``max_tokens``: ``generation_tokens`` is deterministic, and the text is a
    non-empty string of pseudo-words. Assert on counts, not on the exact text:
    releases may differ after a few tokens.

    Usage that works on mlx-vlm 0.3.x and 0.7.x (PaliGemma ignores the chat
    template; its processor inserts the image tokens and BOS itself)::

        model, processor = mlx_vlm.load(str(build_tiny_checkpoint()))
        out = mlx_vlm.generate(
            model, processor, tiny_prompt(processor, model.config, "hi"),
            image=[str(tiny_image_path())], max_tokens=8, verbose=False,
        )

    Older releases (Linux CPU, without ``mlx_vlm_safe``'s fixes): 0.3.0-0.3.1
    and 0.1.22-0.1.27 load it but cannot generate at all, because their
    ``wired_limit`` asks Metal for its device info; with that replaced by a
    no-op they give exactly ``max_tokens`` tokens too. 0.2.0's ``load()``
    fails for every model type except gemma3n (it looks up
    ``AudioModel``), a release bug no checkpoint can avoid. 0.1.7 loads and
    generates but ignores ``max_tokens`` when an image is given (always 256).

    Args:
        path: Target directory. ``None`` means a per-user cache directory (see
            :func:`default_cache_dir`) with a sub-folder named after the
            format version, seed and dtype, e.g. ``tiny-paligemma-v1-s0-float32``.
        seed: Fixes the weights and the tokenizer's training corpus; the same
            seed and dtype give byte-identical files.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` weights.
        force: Rebuild even if a complete checkpoint is already there.
        text_config: Overrides of the Gemma text model's sizes
            (``num_hidden_layers``, ``num_key_value_heads``, ``head_dim`` ...),
            e.g. a model whose KV cache grows fast, for memory tests. The
            cache folder's name then carries a hash of the overrides.

    A complete checkpoint (its marker file, written last, matches seed, dtype
    and format version) is reused unless ``force``. The files are written to a
    temporary sibling directory that is then renamed into place, so concurrent
    builders never expose a half-written checkpoint. An existing directory
    without a marker is replaced only if it is empty or holds only checkpoint
    files (a crashed build); anything else raises :class:`FileExistsError`.

    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if isinstance(seed, bool) or operator.index(seed) < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    text = {**TEXT, **(text_config or {})}
    target = (
        default_cache_dir() / _checkpoint_name(seed, dtype, text)
        if path is None
        else pathlib.Path(path)
    )
    target = target.expanduser().absolute()
    if not force and _is_complete(target, seed, dtype, text):
        return target
    if target.exists() and not (target.is_dir() and _owned_by_us(target)):
        raise FileExistsError(
            f"{target} exists and is not a tiny checkpoint; refusing to replace it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_checkpoint(tmp, seed, dtype, text)
        _move_into_place(tmp, target, seed, dtype, text, force=force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(
    tmp: pathlib.Path,
    target: pathlib.Path,
    seed: int,
    dtype: str,
    text: Mapping[str, int],
    *,
    force: bool,
) -> None:
    """Rename ``tmp`` to ``target``, replacing a stale or forced old copy."""
    for _ in range(10):
        try:
            os.replace(tmp, target)  # atomic; fails if target is a non-empty dir
        except OSError:
            if not target.exists():
                continue  # someone removed it between our calls: retry
            if not force and _is_complete(target, seed, dtype, text):
                return  # a concurrent builder won the race; same bytes
            if not _owned_by_us(target):
                raise FileExistsError(f"{target} is not a tiny checkpoint") from None
            # Stale (half-built) or forced: move it aside atomically, then retry.
            trash = pathlib.Path(
                tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent)
            )
            try:
                os.replace(target, trash / "old")
            except OSError:
                shutil.rmtree(trash, ignore_errors=True)
                continue  # raced with another process; look again
            shutil.rmtree(trash, ignore_errors=True)
            force = False  # the old copy is gone; a new complete one is fine
        else:
            return
    raise RuntimeError(f"could not move the tiny checkpoint into {target}")


def tiny_image(size: int = 32, *, seed: int = 0) -> Image.Image:
    """Return a small deterministic RGB image (random pixels, fixed by ``seed``).

    Why: generation needs a real image through the real image processor; a
    random one exercises the vision tower with non-constant input, and 32x32 is
    the checkpoint's native size, so no resize work is wasted.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert("RGB")  # HxWx3 uint8 is RGB already


def tiny_image_path(directory: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Save :func:`tiny_image` as PNG and return the path.

    Why: ``image=[path]`` is the form every mlx-vlm release accepts; a PIL
    image is not accepted everywhere. The default directory is the per-user
    cache (:func:`default_cache_dir`). The file is written atomically and
    rewritten only if missing or different.
    """
    folder = default_cache_dir() if directory is None else pathlib.Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    tiny_image().save(buf, format="PNG")
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:12]
    path = folder / f"tiny-image-v{FORMAT_VERSION}-{digest}.png"
    try:
        if path.read_bytes() == data:
            return path
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def tiny_prompt(processor: Any, config: Any, text: str, num_images: int = 1) -> str:
    """Return ``text`` formatted the way this mlx-vlm release wants it.

    Why: which prompt form mlx-vlm expects changes between releases; going
    through ``mlx_vlm.prompt_utils.apply_chat_template`` keeps tests
    release-agnostic. For PaliGemma it returns ``"<image>" * num_images +
    text`` (the chat template is ignored) and the processor adds the image
    tokens and BOS. Falls back to that string if the helper is missing.
    """
    try:
        from mlx_vlm.prompt_utils import apply_chat_template
    except ImportError:  # pragma: no cover - very old releases
        return "<image>" * num_images + text
    result = apply_chat_template(processor, config, text, num_images=num_images)
    if isinstance(result, dict):  # some releases return the message itself
        return str(result.get("content", text))
    return str(result)
