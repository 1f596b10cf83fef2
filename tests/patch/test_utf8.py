"""Model output that is not valid UTF-8 (``replace_invalid_utf8``).

The release's own ``BPEStreamingDetokenizer`` runs on the tiny checkpoint's
real byte-level tokenizer. Up to 0.6.8 it raises ``UnicodeDecodeError`` as
soon as a space-led token follows bytes that are not UTF-8 (and up to 0.3.5
in ``finalize`` too); under the patch every release produces 0.6.9's text:
U+FFFD for bad bytes mid-answer, nothing for bad bytes at the very end.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlx_vlm_safe
from mlx_vlm_safe._patch import locate, text_of
from tools.matrix import Expected

from ..conftest import Tiny

pytestmark = pytest.mark.model

LONE_BYTE = "\u00a6"  # byte 0xA6 alone: continues a character nothing started


def _bpe_class() -> Any:
    return importlib.import_module("mlx_vlm.tokenizer_utils").BPEStreamingDetokenizer


def _vocab(tiny: Tiny) -> dict[str, int]:
    vocab: dict[str, int] = tiny.processor.tokenizer.get_vocab()
    return vocab


def _space_led(tiny: Tiny) -> list[int]:
    """Ids of whole words that start with a space (byte-level "Ġ")."""
    found = sorted(
        i for t, i in _vocab(tiny).items() if t[0] == "\u0120" and len(t) > 2
    )
    assert len(found) > 10, "the tiny tokenizer merged no words"
    return found[:20]


def _byte_tokens(tiny: Tiny) -> list[int]:
    """The 256 single-byte tokens (every byte has one in a byte-level BPE)."""
    decoder = _bpe_class()(tiny.processor.tokenizer)._byte_decoder
    vocab = _vocab(tiny)
    return sorted(vocab[c] for c in decoder if c in vocab)


def expected_text(tiny: Tiny, tokens: Sequence[int]) -> str:
    """What mlx-vlm 0.6.9+ makes of ``tokens``: the oracle.

    The pending bytes are flushed at each space-led token and decoded with
    ``errors="replace"``; the last ones, at ``finalize``, with ``"ignore"``.
    """
    detokenizer = _bpe_class()(tiny.processor.tokenizer)
    to_byte, names = detokenizer._byte_decoder, detokenizer.tokenmap
    segments: list[bytes] = [b""]
    for token in tokens:
        name = names[token]
        if to_byte[name[0]] == 32:
            segments.append(b"")
        segments[-1] += bytes(to_byte[c] for c in name)
    *flushed, last = segments
    return "".join(s.decode("utf-8", errors="replace") for s in flushed) + (
        last.decode("utf-8", errors="ignore")
    )


def _detokenize(tiny: Tiny, tokens: Sequence[int]) -> str:
    detokenizer = _bpe_class()(tiny.processor.tokenizer)
    detokenizer.reset()
    for token in tokens:
        detokenizer.add_token(token)
    detokenizer.finalize()
    return str(detokenizer.text)


def test_the_release_raises_on_a_lone_byte_where_the_probe_says_strict(
    tiny: Tiny, release: Expected, unpatched: None
) -> None:
    tokens = [_vocab(tiny)[LONE_BYTE], _space_led(tiny)[0]]
    if release.verdicts["utf8_decode"] == "strict":
        with pytest.raises(UnicodeDecodeError):
            _detokenize(tiny, tokens)
    else:
        assert _detokenize(tiny, tokens) == expected_text(tiny, tokens)


def check_lone_byte_is_replaced(tiny: Tiny) -> None:
    """``replace_invalid_utf8``'s symptom: a lone byte becomes U+FFFD mid-answer."""
    word = _space_led(tiny)[0]
    tokens = [_vocab(tiny)[LONE_BYTE], word, _vocab(tiny)[LONE_BYTE]]
    text = _detokenize(tiny, tokens)
    assert text == expected_text(tiny, tokens)
    assert text.startswith("\ufffd "), text  # mid-answer: marked
    assert not text.endswith("\ufffd"), text  # cut at the end: dropped


def test_patched_lone_byte_becomes_a_replacement_character(tiny: Tiny) -> None:
    check_lone_byte_is_replaced(tiny)


def test_patch_wraps_the_class_and_unpatch_puts_the_methods_back(
    release: Expected,
) -> None:
    cls = _bpe_class()
    fix = next(
        (f for f in mlx_vlm_safe.report().fixes if f.name == "replace_invalid_utf8"),
        None,
    )
    if release.verdicts["utf8_decode"] == "replaces":
        assert fix is None  # 0.6.9+: nothing to fix, nothing touched
        return
    assert fix is not None
    where = f"{cls.__module__}.{cls.__qualname__}"
    assert set(fix.targets) >= {f"{where}.add_token"}
    patched = vars(cls)["add_token"]
    mlx_vlm_safe.unpatch()
    original = vars(cls)["add_token"]
    assert original is not patched
    assert original is patched.__wrapped__
    assert not getattr(original, "__mlx_vlm_safe__", False)
    mlx_vlm_safe.unpatch()  # idempotent: still the release's own
    assert vars(cls)["add_token"] is original
    mlx_vlm_safe.patch()
    assert vars(cls)["add_token"].__wrapped__ is original  # one wrapper, not two


def test_a_detokenizer_unlike_any_release_is_inconclusive_not_a_crash() -> None:
    from mlx_vlm_safe._patch._fixes._utf8 import probe_utf8

    class Renamed:  # a future release that renamed add_token
        def __init__(self, tokenizer: object) -> None:
            self.text = ""

    found = probe_utf8(Renamed)
    assert found.outcome == "inconclusive", found
    assert "add_token" in found.detail, found


@st.composite
def _outputs(draw: st.DrawFn, pool: tuple[list[int], list[int]]) -> list[int]:
    """Token sequences a byte-level model may emit: bytes and words, mixed."""
    bytes_, words = pool
    return draw(st.lists(st.sampled_from(bytes_) | st.sampled_from(words), max_size=24))


@pytest.fixture(scope="module")
def pool(tiny: Tiny) -> tuple[list[int], list[int]]:
    return _byte_tokens(tiny), _space_led(tiny)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_patched_detokenizer_never_raises_and_matches_upstreams_fix(
    tiny: Tiny, pool: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    tokens = data.draw(_outputs(pool))
    assert _detokenize(tiny, tokens) == expected_text(tiny, tokens)


@pytest.fixture
def scripted_output(mlx_vlm: Any) -> Iterator[list[int]]:
    """Make the real model's tokens these (fault injection at ``generate_step``).

    Prefill and decoding run for real; only the ids they pick are replaced,
    as a model that emits these bytes would.
    """
    scope = locate(mlx_vlm).stream_generate.__globals__  # type: ignore[union-attr]
    real = scope["generate_step"]
    script: list[int] = []

    def generate_step(*args: Any, **kwargs: Any) -> Iterator[Any]:
        steps = real(*args, **kwargs)
        try:
            for forced, (_, logprobs) in zip(script, steps, strict=False):
                yield forced, logprobs
        finally:
            steps.close()

    scope["generate_step"] = generate_step
    try:
        yield script
    finally:
        scope["generate_step"] = real


def test_a_generation_that_emits_bad_bytes_completes_with_the_whole_answer(
    mlx_vlm: Any, tiny: Tiny, scripted_output: list[int], release: Expected
) -> None:
    words = _space_led(tiny)
    lone = _vocab(tiny)[LONE_BYTE]
    scripted_output += [words[0], lone, words[1], lone, lone, words[2], lone]
    processor = copy.copy(tiny.processor)  # as a byte-level model loads
    processor.detokenizer = _bpe_class()(tiny.processor.tokenizer)
    result = mlx_vlm.generate(
        tiny.model,
        processor,
        tiny.prompt,
        image=tiny.image,
        max_tokens=len(scripted_output),
        verbose=False,
    )
    text = text_of(result)
    assert text == expected_text(tiny, scripted_output), result
    assert text.count("\ufffd") == 3  # one per bad byte mid-answer; the last dropped
    if release.shape == "result":
        assert result.generation_tokens == len(scripted_output)


def _byte_level(tiny: Tiny) -> Any:
    """The tiny processor with the byte-level detokenizer its tokenizer calls for.

    0.3.10+ pick it for the tiny tokenizer on their own; earlier releases
    compare the tokenizer's decoder with a fixed description and fall back to
    a slower detokenizer that cannot fail (real byte-level models match it).
    """
    processor = copy.copy(tiny.processor)
    processor.detokenizer = _bpe_class()(tiny.processor.tokenizer)
    return processor


def _sampled(mlx_vlm: Any, tiny: Tiny, calls: int) -> list[Any]:
    """Results (or errors) of ``calls`` real 16-token generations at temperature 1.

    No fault is planted: at temperature 1 the tiny model samples single-byte
    tokens often enough that most answers hold bytes that are not UTF-8.
    """
    import mlx.core as mx

    accepted = locate(mlx_vlm).accepted_kwargs or frozenset()
    key = "temperature" if "temperature" in accepted else "temp"  # 0.1.x: temp
    processor = _byte_level(tiny)
    mx.random.seed(0)
    out: list[Any] = []
    for _ in range(calls):
        try:
            result = mlx_vlm.generate(
                tiny.model,
                processor,
                tiny.prompt,
                image=tiny.image,
                max_tokens=16,
                verbose=False,
                **{key: 1.0},
            )
        except Exception as exc:
            out.append(exc)
        else:
            out.append(result)
    return out


def test_sampled_answers_are_whole_with_replacement_characters(
    mlx_vlm: Any, tiny: Tiny, release: Expected
) -> None:
    outcomes = _sampled(mlx_vlm, tiny, 12)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, errors
    if release.shape == "result":  # whole answers, not cut ones
        assert {o.generation_tokens for o in outcomes} == {16}, outcomes
    marked = [o for o in outcomes if "\ufffd" in text_of(o)]
    if release.has("kwargs_dropped"):  # temperature never reaches sampling
        assert not marked, outcomes
    else:
        assert marked, outcomes  # the bad bytes were there, and were replaced


def test_unpatched_sampled_answers_die_in_the_detokenizer(
    mlx_vlm: Any, tiny: Tiny, release: Expected, unpatched: None
) -> None:
    outcomes = _sampled(mlx_vlm, tiny, 12)
    kinds = {type(o).__name__ for o in outcomes if isinstance(o, BaseException)}
    if release.verdicts["utf8_decode"] == "replaces" or release.shipped(
        "kwargs_dropped"
    ):
        assert not kinds, outcomes
    elif release.verdicts["wired_limit"] in ("propagates", "absent"):
        assert "UnicodeDecodeError" in kinds, outcomes  # the release's own error
    elif release.verdicts["wired_limit"] == "swallows":  # 0.3.2-0.3.10:
        # the error vanishes
        # ... and the answer stops where it was raised, looking finished
        cut = [o for o in outcomes if getattr(o, "generation_tokens", 16) < 16]
        assert cut or kinds, outcomes
    else:  # no generation at all off Metal
        assert kinds, outcomes
