"""The tiny model itself: its configs, tokenizer and random weights.

Strictly private (``_checkpoint`` writes it to disk and caches it). A ~0.5 MB
PaliGemma: SigLIP vision tower, Gemma text model, linear projector, and a
byte-level BPE tokenizer trained on synthetic text. Every size here is the
smallest that mlx-vlm's own PaliGemma code accepts on every release tested.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

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

#: The text model's sizes, the default of ``build_tiny_checkpoint``.
TEXT = _TEXT


def write_json(path: pathlib.Path, obj: Any) -> None:
    """Write ``obj`` as stable, human-readable JSON."""
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


def write_model_files(
    directory: pathlib.Path, seed: int, dtype: str, text: Mapping[str, int]
) -> None:
    """Write configs, tokenizer, chat template and weights into ``directory``."""
    import mlx.core as mx

    for name, obj in _configs(dtype, text).items():
        write_json(directory / name, obj)
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
