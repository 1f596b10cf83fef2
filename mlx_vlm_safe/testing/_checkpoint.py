"""Build a tiny random-weight PaliGemma checkpoint that real mlx-vlm can run.

Why this exists: there is no model hub in CI or offline, yet the only honest test
of a wrapper around ``mlx_vlm.generate()`` is the real ``mlx_vlm.load()`` and the
real ``generate()``. A ~0.5 MB PaliGemma (SigLIP vision tower, Gemma text model,
linear projector) with random weights and a byte-level BPE tokenizer trained on
synthetic text loads in tens of milliseconds and generates hundreds of tokens
per second on CPU. The layout below is the one that was verified to load and
generate on mlx-vlm 0.3.2-0.3.11 and 0.7.10 (see ``docs/tiny-checkpoint.md``).

Heavy imports (mlx, numpy, tokenizers, PIL) happen inside the functions, so
``import mlx_vlm_safe.testing`` stays cheap.
"""

# Heavy imports are deliberately local to the functions that need them.

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

# Special tokens take ids 0-4, in this order; mlx-vlm's PaliGemma reads
# pad_token_id and image_token_index from config.json, so they must agree.
_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<image>")
_PAD_ID, _EOS_ID, _BOS_ID, _UNK_ID, _IMAGE_ID = range(5)
_N_BYTES = 256  # byte-level BPE alphabet: ids 5..260

_VOCAB = 512
_TEXT = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
}
_VISION = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
_IMAGE_TOKENS = (_VISION["image_size"] // _VISION["patch_size"]) ** 2  # 16
# 0.02 (the usual init) makes greedy decoding repeat one token forever; 0.2
# gives varied pseudo-words, which makes the decoded text non-trivial.
_STD = 0.2

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
)

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
    if dict(text) == _TEXT:
        return name
    digest = hashlib.sha256(json.dumps(dict(text), sort_keys=True).encode())
    return f"{name}-t{digest.hexdigest()[:10]}"


def _marker_payload(seed: int, dtype: str, text: Mapping[str, int]) -> str:
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "dtype": dtype,
    }
    if dict(text) != _TEXT:
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


def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _configs(dtype: str, text: Mapping[str, int]) -> dict[str, Any]:
    text_config = {
        "model_type": "gemma",
        **text,
        "vocab_size": _VOCAB,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_act": "gelu_pytorch_tanh",
        "num_image_tokens": _IMAGE_TOKENS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
    }
    vision_config = {
        "model_type": "siglip_vision_model",
        **_VISION,
        "projection_dim": text["hidden_size"],
        "num_channels": 3,
        "layer_norm_eps": 1e-6,
    }
    config = {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        # mlx-vlm scales image features by the top-level hidden_size (its
        # default is 2048), so it must match the text model.
        "hidden_size": text["hidden_size"],
        "projection_dim": text["hidden_size"],
        "vocab_size": _VOCAB,
        "image_token_index": _IMAGE_ID,
        "pad_token_id": _PAD_ID,
        "bos_token_id": _BOS_ID,
        "eos_token_id": _EOS_ID,
        "torch_dtype": dtype,
        "text_config": text_config,
        "vision_config": vision_config,
    }
    generation = {
        "bos_token_id": _BOS_ID,
        "eos_token_id": _EOS_ID,
        "pad_token_id": _PAD_ID,
    }
    specials_map = {
        "pad_token": "<pad>",
        "eos_token": "<eos>",
        "bos_token": "<bos>",
        "unk_token": "<unk>",
        "additional_special_tokens": ["<image>"],
    }
    tokenizer_config = {
        # Not "GemmaTokenizer": AutoTokenizer would then look for sentencepiece.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials_map,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 512,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "processor_class": "PaliGemmaProcessor",
    }
    preprocessor = {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "PaliGemmaProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": _VISION["image_size"], "width": _VISION["image_size"]},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_seq_length": _IMAGE_TOKENS,
    }
    processor = {
        "processor_class": "PaliGemmaProcessor",
        "image_seq_length": _IMAGE_TOKENS,
    }
    return {
        "config.json": config,
        "generation_config.json": generation,
        "special_tokens_map.json": specials_map,
        "tokenizer_config.json": tokenizer_config,
        "preprocessor_config.json": preprocessor,
        "processor_config.json": processor,
    }


def _corpus(seed: int) -> list[str]:
    """Return a few hundred pseudo-sentences, fixed by ``seed`` (ASCII only).

    ASCII only, so that every merged BPE token decodes to valid UTF-8 on its own
    and streamed text never contains replacement characters.
    """
    import numpy as np

    rng = np.random.RandomState(seed)
    onsets = [*"bdfgklmnprstvz", "ch", "sh", "th", "tr", "st", "pl"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou"]
    codas = ["", "", "", "n", "r", "s", "l", "t", "m"]
    syllables = [o + v + c for o in onsets for v in vowels for c in codas]
    words = sorted(
        {
            "".join(syllables[int(i)] for i in rng.randint(0, len(syllables), n))
            for n in rng.randint(1, 4, size=600)
        }
    )
    weights = 1.0 / np.arange(1, len(words) + 1)  # Zipf-like: common words merge
    weights /= weights.sum()
    sentences = []
    for length in rng.randint(4, 14, size=400):
        picked = rng.choice(len(words), size=int(length), p=weights)
        sentence = " ".join(words[int(i)] for i in picked)
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
    return sentences


def _build_tokenizer(seed: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=_VOCAB,
        special_tokens=list(_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    if tok.get_vocab_size() != _VOCAB:
        raise RuntimeError(
            f"tiny BPE has {tok.get_vocab_size()} tokens, expected {_VOCAB}"
        )
    for i, name in enumerate(_SPECIALS):
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"special token {name!r} is not at id {i}")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A",
        pair="<bos> $A $B",
        special_tokens=[("<bos>", _BOS_ID)],
    )
    return tok


def _weight_shapes(text: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """MLX names and layouts, as ``mlx_vlm.convert`` writes them.

    Writing the already-converted layout (conv weight O,kH,kW,I) means every
    release's ``sanitize()`` leaves the weights alone.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    v, vi = _VISION["hidden_size"], _VISION["intermediate_size"]
    p = _VISION["patch_size"]
    vp = "vision_tower.vision_model."
    shapes[vp + "embeddings.patch_embedding.weight"] = (v, p, p, 3)
    shapes[vp + "embeddings.patch_embedding.bias"] = (v,)
    shapes[vp + "embeddings.position_embedding.weight"] = (_IMAGE_TOKENS, v)
    for i in range(_VISION["num_hidden_layers"]):
        lp = f"{vp}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{lp}self_attn.{proj}.weight"] = (v, v)
            shapes[f"{lp}self_attn.{proj}.bias"] = (v,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{lp}{norm}.weight"] = (v,)
            shapes[f"{lp}{norm}.bias"] = (v,)
        shapes[lp + "mlp.fc1.weight"] = (vi, v)
        shapes[lp + "mlp.fc1.bias"] = (vi,)
        shapes[lp + "mlp.fc2.weight"] = (v, vi)
        shapes[lp + "mlp.fc2.bias"] = (v,)
    shapes[vp + "post_layernorm.weight"] = (v,)
    shapes[vp + "post_layernorm.bias"] = (v,)
    shapes["multi_modal_projector.linear.weight"] = (text["hidden_size"], v)
    shapes["multi_modal_projector.linear.bias"] = (text["hidden_size"],)

    h, ti = text["hidden_size"], text["intermediate_size"]
    hd = text["head_dim"]
    q, kv = text["num_attention_heads"] * hd, text["num_key_value_heads"] * hd
    tp = "language_model.model."
    # The LM head is tied to embed_tokens (Gemma), so there is no lm_head.
    shapes[tp + "embed_tokens.weight"] = (_VOCAB, h)
    for i in range(text["num_hidden_layers"]):
        lp = f"{tp}layers.{i}."
        shapes[lp + "self_attn.q_proj.weight"] = (q, h)
        shapes[lp + "self_attn.k_proj.weight"] = (kv, h)
        shapes[lp + "self_attn.v_proj.weight"] = (kv, h)
        shapes[lp + "self_attn.o_proj.weight"] = (h, q)
        shapes[lp + "mlp.gate_proj.weight"] = (ti, h)
        shapes[lp + "mlp.up_proj.weight"] = (ti, h)
        shapes[lp + "mlp.down_proj.weight"] = (h, ti)
        shapes[lp + "input_layernorm.weight"] = (h,)
        shapes[lp + "post_attention_layernorm.weight"] = (h,)
    shapes[tp + "norm.weight"] = (h,)
    return shapes


def _weights(seed: int, text: Mapping[str, int]) -> dict[str, Any]:
    """Random float32 numpy weights, fixed by ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for name, shape in sorted(_weight_shapes(text).items()):
        if name.startswith("language_model.") and name.endswith("norm.weight"):
            # Gemma RMSNorm scales by (1 + w): zeros give the identity scale.
            arr = np.zeros(shape, np.float32)
        elif "norm" in name:  # SigLIP LayerNorm
            fill = 1.0 if name.endswith(".weight") else 0.0
            arr = np.full(shape, fill, np.float32)
        elif name.endswith(".bias"):
            arr = np.zeros(shape, np.float32)
        else:
            arr = rng.normal(0.0, _STD, size=shape).astype(np.float32)
        out[name] = arr
    # The LM head is tied to embed_tokens, so these rows are the output logits
    # of the special tokens (EOS included) and of the 256 single-byte tokens.
    # Zero logits lose to the max over ~250 random ones, so greedy decoding never
    # stops early and always emits whole pseudo-words: a call runs to max_tokens.
    out["language_model.model.embed_tokens.weight"][: len(_SPECIALS) + _N_BYTES] = 0
    return out


def _write_checkpoint(
    directory: pathlib.Path, seed: int, dtype: str, text: Mapping[str, int]
) -> None:
    import mlx.core as mx

    for name, obj in _configs(dtype, text).items():
        _write_json(directory / name, obj)
    (directory / "chat_template.jinja").write_text(_CHAT_TEMPLATE, encoding="utf-8")
    tok = _build_tokenizer(seed)
    (directory / "tokenizer.json").write_text(
        tok.to_str(pretty=True) + "\n", encoding="utf-8"
    )

    mx_dtype = getattr(mx, dtype)
    arrays = {k: mx.array(v).astype(mx_dtype) for k, v in _weights(seed, text).items()}
    mx.save_safetensors(
        str(directory / "model.safetensors"), arrays, metadata={"format": "mlx"}
    )
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
    on synthetic text. On CPU it loads in tens of milliseconds and generates
    about a thousand tokens per second.

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
    text = {**_TEXT, **(text_config or {})}
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
