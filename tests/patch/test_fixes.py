"""Each fix, on the real installed release: the caller gets the truth.

Every test here runs the real ``load()``/``generate()``. Faults are planted at
``generate_step`` (``mlx_vlm_safe.testing``); everything around them is real.
Tests that take the ``unpatched`` fixture show what the release does without
the library, so the same run proves both the defect and the fix. What each
release does is read from ``tools/matrix.py`` (the ``release``
fixture: its row plus the facts of the installed version), never from ``if``s
on version numbers here.
"""

from __future__ import annotations

import dataclasses
import re
import traceback
from typing import Any

import numpy as np
import pytest

import mlx_vlm_safe
from mlx_vlm_safe.testing import empty_stream, plant_fault
from tools.matrix import ENTRY_ERROR, Expected

from ..conftest import NONE_DEFECT, Tiny, counting_tokens, temperature_keyword

pytestmark = pytest.mark.model

#: Realistic bad calls that fail *inside* stream_generate on some releases.
#: The first two are the triggers named in shared/docs/root-cause.md.
TRIGGERS: dict[str, dict[str, Any]] = {
    "repetition_penalty=1 (int from a config)": {"repetition_penalty": 1},
    "temperature='0.7' (str from a JSON body)": {"temperature": "0.7"},
    "top_p='0.9' (str from a JSON body)": {"top_p": "0.9", "temperature": 0.5},
    "kv_bits=3 with a group size the model cannot take": {
        "kv_bits": 3,
        "kv_group_size": 7,
        "quantized_kv_start": 0,
    },
    "logit_bias with str keys (from JSON)": {"logit_bias": {"a": 1.0}},
    "repetition_context_size='x'": {
        "repetition_penalty": 1.2,
        "repetition_context_size": "x",
    },
}


def _shape_ok(result: Any, release: Expected) -> bool:
    if release.shape == "str":
        return isinstance(result, str)
    if release.shape == "tuple":
        return isinstance(result, tuple) and len(result) == 2
    return dataclasses.is_dataclass(result) and type(result).__name__ == (
        "GenerationResult"
    )


def _text(result: Any) -> str:
    if isinstance(result, tuple):
        return str(result[0])
    return result if isinstance(result, str) else str(result.text)


def _tokens(result: Any, counted: int) -> int:
    """Tokens in ``result``, as the result says; ``counted`` at the seam for str."""
    if isinstance(result, str):  # 0.1.x: the text alone
        return counted
    if isinstance(result, tuple):
        tokens = int(result[1]["output_tokens"])
    else:
        tokens = int(result.generation_tokens)
    assert tokens == counted, (tokens, counted)  # the result tells the truth
    return tokens


def _counted_call(tiny: Tiny, generate: Any, **kwargs: Any) -> tuple[Any, int]:
    """Call ``generate``; return the result and how many tokens it holds."""
    with counting_tokens() as record:
        result = tiny.call(generate, **kwargs)
    return result, _tokens(result, record.tokens)


def _error_of(call: Any) -> BaseException | None:
    """The exception ``call()`` raises, or None if it returns."""
    try:
        call()
    except Exception as exc:
        return exc
    return None


def _entry_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a variant-A wired_limit failing on entry off Metal."""
    return isinstance(exc, KeyError | RuntimeError) and bool(
        re.search(ENTRY_ERROR, str(exc))
    )


def check_generation_runs(tiny: Tiny, mlx_vlm: Any, release: Expected) -> None:
    """``generate_off_metal``'s symptom: a normal call generates at all."""
    result = tiny.call(mlx_vlm.generate, max_tokens=2)
    assert _shape_ok(result, release)
    assert _text(result)


def test_happy_path_keeps_the_release_shape(
    tiny: Tiny, mlx_vlm: Any, release: Expected
) -> None:
    """A normal call returns the release's own type, full length, and says why."""
    check_generation_runs(tiny, mlx_vlm, release)
    result, tokens = _counted_call(tiny, mlx_vlm.generate, max_tokens=8)
    assert _shape_ok(result, release)
    assert _text(result)
    assert tokens == release.tokens_for(8)
    assert mlx_vlm_safe.last_outcome() == mlx_vlm_safe.Outcome(
        "length", release.tokens_for(8)
    )


@pytest.mark.parametrize("kwargs", TRIGGERS.values(), ids=TRIGGERS.keys())
def test_trigger_gives_the_real_error_or_a_real_result(
    tiny: Tiny, mlx_vlm: Any, release: Expected, kwargs: dict[str, Any]
) -> None:
    """Patched, a bad call never ends in the None defect."""
    counted: list[int] = []
    error = _error_of(
        lambda: counted.append(_counted_call(tiny, mlx_vlm.generate, **kwargs)[1])
    )
    if error is None:
        assert counted == [release.tokens_for(8)]
    else:
        assert NONE_DEFECT not in str(error)
        assert error.__traceback__ is not None
        assert not _entry_failure(error)  # generate_off_metal is in place


def _outcome(tiny: Tiny, generate: Any, kwargs: dict[str, Any]) -> str:
    """A comparable summary of a call: the exception type, or the token count."""
    try:
        _, tokens = _counted_call(tiny, generate, **kwargs)
    except AttributeError as exc:
        return "none-defect" if NONE_DEFECT in str(exc) else "AttributeError"
    except Exception as exc:
        return "fails-on-entry" if _entry_failure(exc) else type(exc).__name__
    return f"{tokens} tokens"


@pytest.mark.parametrize("kwargs", TRIGGERS.values(), ids=TRIGGERS.keys())
def test_trigger_that_was_swallowed_now_raises(
    tiny: Tiny, mlx_vlm: Any, release: Expected, kwargs: dict[str, Any]
) -> None:
    """Where the release hid an error behind the None defect, the error comes back;
    where every call failed on entry, the call runs for real; where it dropped
    the keywords and a fix passes them on, they reach the model; elsewhere the
    patch changes nothing."""
    mlx_vlm_safe.unpatch()
    try:
        before = _outcome(tiny, mlx_vlm.generate, kwargs)
    finally:
        mlx_vlm_safe.patch()
    after = _outcome(tiny, mlx_vlm.generate, kwargs)
    real = {"ValueError", "TypeError", "IndexError"}
    if release.fails_on_entry:  # 0.1.22-0.3.1 off Metal: nothing ever ran
        assert before == "fails-on-entry"
        assert after in real | {f"{release.tokens_for(8)} tokens"}
    elif before == "none-defect":
        assert after in real
    elif release.shipped("kwargs_dropped") and not release.has("kwargs_dropped"):
        assert before == f"{release.tokens_for(8, patched=False)} tokens"
        assert after in real | {f"{release.tokens_for(8)} tokens"}
    else:
        assert after == before


def test_documented_triggers_hit_the_defect_on_affected_releases(
    tiny: Tiny, mlx_vlm: Any, release: Expected, unpatched: None
) -> None:
    """On 0.3.2-0.3.10 off Metal both root-cause.md triggers end as the None defect."""
    first_two = list(TRIGGERS.values())[:2]
    for kwargs in first_two:
        if release.verdicts["wired_limit"] == "swallows":
            with pytest.raises(AttributeError, match="NoneType"):
                tiny.call(mlx_vlm.generate, **kwargs)
        elif release.fails_on_entry:
            with pytest.raises((KeyError, RuntimeError), match=ENTRY_ERROR):
                tiny.call(mlx_vlm.generate, **kwargs)
        else:  # the real error or a real answer: what a fixed release gives
            error = _error_of(lambda kw=kwargs: tiny.call(mlx_vlm.generate, **kw))
            assert NONE_DEFECT not in str(error)


def test_documented_triggers_raise_their_real_type_when_patched(
    tiny: Tiny, mlx_vlm: Any, release: Expected
) -> None:
    """The two root-cause.md triggers: ValueError and TypeError, as 0.3.11 gives.

    0.3.12+ accept an int penalty (mlx-lm's samplers); 0.1.7-0.1.9 drop every
    keyword, so neither trigger reaches the model there: a full answer. Where
    generate_step names no ``temperature`` (0.1.10 and before call it ``temp``;
    0.1.21 has it), a str temperature never reaches sampling: a full answer.
    """
    rep, temp = list(TRIGGERS.values())[:2]
    if release.has("kwargs_dropped"):
        for kwargs in (rep, temp):
            _, tokens = _counted_call(tiny, mlx_vlm.generate, **kwargs)
            assert tokens == release.tokens_for(8)
        return
    if release.has("rejects_int_repetition_penalty"):
        with pytest.raises(ValueError, match="repetition_penalty"):
            tiny.call(mlx_vlm.generate, **rep)
    else:
        _, tokens = _counted_call(tiny, mlx_vlm.generate, **rep)
        assert tokens == release.tokens_for(8)
    if temperature_keyword(mlx_vlm) != "temperature":
        _, tokens = _counted_call(tiny, mlx_vlm.generate, **temp)
        assert tokens == release.tokens_for(8)
        return
    with pytest.raises(TypeError):
        tiny.call(mlx_vlm.generate, **temp)


@pytest.mark.parametrize("after", [0, 1, 5])
def test_error_after_k_tokens_raises_the_same_object(
    tiny: Tiny, mlx_vlm: Any, after: int
) -> None:
    """An error mid-answer raises; the caller gets the very object, with its frames."""
    planted = RuntimeError("decoder failed")
    with (
        plant_fault(planted, after_tokens=after) as record,
        pytest.raises(RuntimeError) as info,
    ):
        tiny.call(mlx_vlm.generate, max_tokens=8)
    assert info.value is planted
    assert record.fired == 1
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "generate_step" in frames  # the frame that raised it is still there


@pytest.mark.parametrize("after", [1, 5])
def test_cut_answer_was_returned_as_complete_without_the_patch(
    tiny: Tiny, mlx_vlm: Any, release: Expected, unpatched: None, after: int
) -> None:
    """The defect the previous test fixes: a cut answer that looks finished."""
    with plant_fault(RuntimeError("decoder failed"), after_tokens=after) as record:
        if release.verdicts["wired_limit"] == "swallows":
            result = tiny.call(mlx_vlm.generate, max_tokens=8)
            assert _tokens(result, record.tokens) == after
        elif release.fails_on_entry:
            with pytest.raises((KeyError, RuntimeError), match=ENTRY_ERROR):
                tiny.call(mlx_vlm.generate, max_tokens=8)
        else:
            with pytest.raises(RuntimeError, match="decoder failed"):
                tiny.call(mlx_vlm.generate, max_tokens=8)


@pytest.mark.parametrize(
    "exc", [KeyboardInterrupt, SystemExit, MemoryError, GeneratorExit]
)
def test_base_exceptions_reach_the_caller(
    tiny: Tiny, mlx_vlm: Any, exc: type[BaseException]
) -> None:
    """Ctrl-C, exit, out-of-memory mid-generation: raised, never swallowed."""
    planted = exc()
    with plant_fault(planted, after_tokens=2), pytest.raises(exc) as info:
        tiny.call(mlx_vlm.generate, max_tokens=8)
    assert info.value is planted


def test_ctrl_c_was_swallowed_without_the_patch(
    tiny: Tiny, mlx_vlm: Any, release: Expected, unpatched: None
) -> None:
    """The defect: Ctrl-C in the middle of a generation ended it 'normally'."""
    with plant_fault(KeyboardInterrupt, after_tokens=2) as record:
        if release.verdicts["wired_limit"] == "swallows":
            result = tiny.call(mlx_vlm.generate, max_tokens=8)
            assert _tokens(result, record.tokens) == 2
        elif release.fails_on_entry:
            with pytest.raises((KeyError, RuntimeError), match=ENTRY_ERROR):
                tiny.call(mlx_vlm.generate, max_tokens=8)
        else:
            with pytest.raises(KeyboardInterrupt):
                tiny.call(mlx_vlm.generate, max_tokens=8)


def check_errors_reach_the_caller(tiny: Tiny, mlx_vlm: Any) -> None:
    """``propagate_errors``' symptom: an error in generation reaches the caller.

    With ``verbose=True``, where 0.3.2-0.3.10 off Metal return an empty result.
    """
    planted = ValueError("bad argument")
    with (
        plant_fault(planted, after_tokens=0),
        pytest.raises(ValueError, match="bad argument") as info,
    ):
        tiny.call(mlx_vlm.generate, max_tokens=8, verbose=True)
    assert info.value is planted


def test_verbose_true_raises_instead_of_a_silent_empty_result(
    tiny: Tiny, mlx_vlm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """verbose=True used to turn any error into an empty result on 0.3.2-0.3.10."""
    check_errors_reach_the_caller(tiny, mlx_vlm)
    capsys.readouterr()


def test_stream_generate_raises_the_real_error(tiny: Tiny, exports: Any) -> None:
    """stream_generate: items before the error arrive, then the error itself."""
    planted = ValueError("bad argument")
    items: list[Any] = []
    with (
        plant_fault(planted, after_tokens=3),
        pytest.raises(ValueError, match="bad argument") as info,
    ):
        items.extend(tiny.stream(exports.stream_generate, max_tokens=8))
    assert info.value is planted
    assert len(items) == 3


def test_stream_generate_ended_empty_without_the_patch(
    tiny: Tiny, exports: Any, release: Expected, unpatched: None
) -> None:
    """The defect: an error before the first token made the stream end silently."""
    with plant_fault(ValueError("bad argument"), after_tokens=0):
        if release.verdicts["wired_limit"] == "swallows":
            assert list(tiny.stream(exports.stream_generate)) == []
        elif release.fails_on_entry:
            with pytest.raises((KeyError, RuntimeError), match=ENTRY_ERROR):
                list(tiny.stream(exports.stream_generate))
        else:
            with pytest.raises(ValueError, match="bad argument"):
                list(tiny.stream(exports.stream_generate))


def test_reference_captured_before_the_patch_is_fixed_too(
    tiny: Tiny, mlx_vlm: Any
) -> None:
    """``from mlx_vlm import generate`` before the patch: errors, empties are safe."""
    mlx_vlm_safe.unpatch()
    captured = mlx_vlm.generate
    mlx_vlm_safe.patch()
    assert captured is not mlx_vlm.generate
    planted = ValueError("bad argument")
    with (
        plant_fault(planted, after_tokens=0),
        pytest.raises(ValueError, match="bad argument") as info,
    ):
        tiny.call(captured)
    assert info.value is planted
    with empty_stream():
        result = tiny.call(captured)
    assert _text(result) == ""


def check_empty_stream_gives_an_empty_result(tiny: Tiny, mlx_vlm: Any) -> None:
    """``never_empty_stream``'s symptom: nothing generated is an empty result."""
    with empty_stream():
        result = tiny.call(mlx_vlm.generate)
    assert result is not None
    assert _text(result) == ""


def check_stream_end_is_recorded(tiny: Tiny, exports: Any, release: Expected) -> None:
    """``observed_stream``'s symptom: a stream says why it ended.

    Two streams that end differently, so a stale outcome cannot pass.
    """
    list(tiny.stream(exports.stream_generate, max_tokens=2))
    first = mlx_vlm_safe.last_outcome()
    assert first is not None
    assert first.finish_reason == "length"
    assert first.generation_tokens == release.tokens_for(2)
    with empty_stream():
        list(tiny.stream(exports.stream_generate))
    assert mlx_vlm_safe.last_outcome() == mlx_vlm_safe.Outcome("empty", 0)


def check_generate_retries_a_failure_mid_answer(tiny: Tiny, mlx_vlm: Any) -> None:
    """``none_safe_generate``'s symptom: a transient failure after tokens is retried.

    Only ``generate()`` can retry once items were made (a stream cannot take
    back what it yielded), so this fails without the generate wrapper.
    """
    with plant_fault(MemoryError(), after_tokens=2, times=1) as fault:
        result = tiny.call(mlx_vlm.generate, max_tokens=8)
    assert fault.fired == 1
    assert result is not None
    assert _text(result)


def test_a_failure_mid_answer_is_retried_by_generate(tiny: Tiny, mlx_vlm: Any) -> None:
    check_generate_retries_a_failure_mid_answer(tiny, mlx_vlm)


def test_empty_stream_returns_the_release_shape_empty(
    tiny: Tiny, mlx_vlm: Any, release: Expected
) -> None:
    """Nothing generated, no error: an empty result of the release's type."""
    check_empty_stream_gives_an_empty_result(tiny, mlx_vlm)
    for verbose in (False, True):
        with empty_stream():
            result = tiny.call(mlx_vlm.generate, verbose=verbose)
        assert result is not None
        assert _shape_ok(result, release)
        assert _text(result) == ""
        assert mlx_vlm_safe.last_outcome() == mlx_vlm_safe.Outcome("empty", 0)


def test_empty_stream_crashed_without_the_patch(
    tiny: Tiny, mlx_vlm: Any, release: Expected, unpatched: None
) -> None:
    """The defect: upstream generate() dereferences the missing last item."""
    with empty_stream():
        if release.verdicts["empty_stream"] == "unguarded":
            with pytest.raises(AttributeError, match="NoneType"):
                tiny.call(mlx_vlm.generate)
        else:
            assert _text(tiny.call(mlx_vlm.generate)) == ""


def test_wrapped_stream_never_ends_empty_where_generate_is_unguarded(
    tiny: Tiny, exports: Any, release: Expected
) -> None:
    """stream_generate itself yields one empty item rather than nothing."""
    check_stream_end_is_recorded(tiny, exports, release)
    with empty_stream():
        items = list(tiny.stream(exports.stream_generate))
    expected = 1 if release.verdicts["empty_stream"] != "guarded" else 0
    assert len(items) == expected
    assert mlx_vlm_safe.last_outcome() == mlx_vlm_safe.Outcome("empty", 0)


@pytest.mark.parametrize("bad", ["8", -1, 2.5, True])
def test_max_tokens_that_would_never_stop_is_refused_at_once(
    tiny: Tiny, mlx_vlm: Any, exports: Any, bad: object
) -> None:
    """A str or negative max_tokens made mlx-vlm generate forever; now: an error."""
    with pytest.raises((TypeError, ValueError), match="max_tokens"):
        tiny.call(mlx_vlm.generate, max_tokens=bad)
    with pytest.raises((TypeError, ValueError), match="max_tokens"):
        tiny.stream(exports.stream_generate, max_tokens=bad)


def test_missing_image_is_a_clear_error_at_once(tiny: Tiny, mlx_vlm: Any) -> None:
    """A bad image path is the caller's error: raised, not retried, not hidden."""
    with pytest.raises((ValueError, OSError), match="nope"):
        tiny.call(mlx_vlm.generate, image=["/nope/missing.png"])


def test_caller_built_pixel_values_error_is_real(
    tiny: Tiny, mlx_vlm: Any, release: Expected
) -> None:
    """Caller-built arrays of the wrong kind: the real error, not the None defect."""
    arrays = {
        "input_ids": np.array([[2, 5, 6]]),
        "pixel_values": np.zeros((1, 3, 32, 32)),
        "mask": None,
    }
    if release.has("kwargs_dropped"):  # the arrays never reach the model
        _, tokens = _counted_call(tiny, mlx_vlm.generate, **arrays)
        assert tokens == release.tokens_for(8)
        return
    error = _error_of(lambda: tiny.call(mlx_vlm.generate, **arrays))
    assert error is not None, "wrong arrays gave an answer"
    assert NONE_DEFECT not in str(error)
    assert not _entry_failure(error)


def _text(result: Any) -> Any:
    if isinstance(result, tuple):
        return result[0]
    return result if isinstance(result, str) else result.text


def test_max_tokens_zero_is_newest_upstreams_empty_answer(
    tiny: Tiny, mlx_vlm: Any, exports: Any
) -> None:
    """max_tokens=0 on every release: empty, ended by length, nothing generated.

    0.1.0-0.5.0 raise UnboundLocalError ('token') there, 0.6+ return an empty
    result with finish_reason "length": the newest behaviour, everywhere.
    """
    with counting_tokens() as seen:
        result = tiny.call(mlx_vlm.generate, max_tokens=0)
        items = list(tiny.stream(exports.stream_generate, max_tokens=0))
    assert seen.tokens == 0
    assert _text(result) == ""
    assert mlx_vlm_safe.last_outcome() == mlx_vlm_safe.Outcome("length", 0)
    assert [_text(item) for item in items] == [""]
    for value in (result, items[0]):
        assert getattr(value, "finish_reason", "length") == "length"


def test_max_tokens_zero_unpatched_is_the_release_own(
    tiny: Tiny, mlx_vlm: Any, release: Expected, unpatched: None
) -> None:
    """The control: what the release does without us (the table's fact)."""
    if release.fails_on_entry:  # 0.1.22-0.3.1 off Metal: nothing generates
        error = _error_of(lambda: tiny.call(mlx_vlm.generate, max_tokens=0))
        assert error is not None
        assert _entry_failure(error), error
    elif release.shipped("max_tokens_zero_raises") and not release.shipped(
        "kwargs_dropped"
    ):
        error = _error_of(lambda: tiny.call(mlx_vlm.generate, max_tokens=0))
        assert isinstance(error, (UnboundLocalError, AttributeError)), error
    else:
        _, tokens = _counted_call(tiny, mlx_vlm.generate, max_tokens=0)
        assert tokens == release.tokens_for(0, patched=False)
