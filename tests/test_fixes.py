"""Each fix, on the real installed release: the caller gets the truth.

Every test here runs the real ``load()``/``generate()``. Faults are planted at
``generate_step`` (``mlx_vlm_safe.testing``); everything around them is real.
Tests that take the ``unpatched`` fixture show what the release does without
the library, so the same run proves both the defect and the fix.
"""

from __future__ import annotations

import dataclasses
import traceback
from typing import Any

import numpy as np
import pytest

import mlx_vlm_safe
from mlx_vlm_safe._releases import Release
from mlx_vlm_safe.testing import empty_stream, plant_fault

from .conftest import NONE_DEFECT, Tiny

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


def _shape_ok(result: Any, release: Release) -> bool:
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


def _tokens(result: Any) -> int:
    if isinstance(result, tuple):
        return int(result[1]["output_tokens"])
    return int(result.generation_tokens)


def test_happy_path_keeps_the_release_shape(
    tiny: Tiny, mlx_vlm: Any, release: Release
) -> None:
    """A normal call returns the release's own type, full length, and says why."""
    result = tiny.call(mlx_vlm.generate, max_tokens=8)
    assert _shape_ok(result, release)
    assert _text(result)
    assert _tokens(result) == 8
    assert mlx_vlm_safe.last_outcome() == mlx_vlm_safe.Outcome("length", 8)


@pytest.mark.parametrize("kwargs", TRIGGERS.values(), ids=TRIGGERS.keys())
def test_trigger_gives_the_real_error_or_a_real_result(
    tiny: Tiny, mlx_vlm: Any, kwargs: dict[str, Any]
) -> None:
    """Patched, a bad call never ends in the None defect."""
    try:
        result = tiny.call(mlx_vlm.generate, **kwargs)
    except AttributeError as exc:
        assert NONE_DEFECT not in str(exc)
    except Exception as exc:
        assert exc.__traceback__ is not None
    else:
        assert _tokens(result) == 8


def _outcome(tiny: Tiny, generate: Any, kwargs: dict[str, Any]) -> str:
    """A comparable summary of a call: the exception type, or the token count."""
    try:
        result = tiny.call(generate, **kwargs)
    except AttributeError as exc:
        return "none-defect" if NONE_DEFECT in str(exc) else "AttributeError"
    except Exception as exc:
        return type(exc).__name__
    return f"{_tokens(result)} tokens"


@pytest.mark.parametrize("kwargs", TRIGGERS.values(), ids=TRIGGERS.keys())
def test_trigger_that_was_swallowed_now_raises(
    tiny: Tiny, mlx_vlm: Any, kwargs: dict[str, Any]
) -> None:
    """Where the release hid an error behind the None defect, the error comes back;
    where it did not, the patch changes nothing."""
    mlx_vlm_safe.unpatch()
    try:
        before = _outcome(tiny, mlx_vlm.generate, kwargs)
    finally:
        mlx_vlm_safe.patch()
    after = _outcome(tiny, mlx_vlm.generate, kwargs)
    if before == "none-defect":
        assert after in {"ValueError", "TypeError", "IndexError"}
    else:
        assert after == before


def test_documented_triggers_hit_the_defect_on_affected_releases(
    tiny: Tiny, mlx_vlm: Any, release: Release, unpatched: None
) -> None:
    """On 0.3.2-0.3.10 off Metal both root-cause.md triggers end as the None defect."""
    first_two = list(TRIGGERS.values())[:2]
    for kwargs in first_two:
        if release.wired_limit == "swallows":
            with pytest.raises(AttributeError, match="NoneType"):
                tiny.call(mlx_vlm.generate, **kwargs)
        else:
            try:
                tiny.call(mlx_vlm.generate, **kwargs)
            except AttributeError as exc:
                assert NONE_DEFECT not in str(exc)
            except Exception:  # the real error: what a fixed release gives
                pass


def test_documented_triggers_raise_their_real_type_when_patched(
    tiny: Tiny, mlx_vlm: Any, release: Release
) -> None:
    """The two root-cause.md triggers: ValueError and TypeError, as 0.3.11+ gives."""
    rep, temp = list(TRIGGERS.values())[:2]
    if release.layout == "module":  # 0.3.x-0.5.0 reject an int penalty
        with pytest.raises(ValueError, match="repetition_penalty"):
            tiny.call(mlx_vlm.generate, **rep)
    with pytest.raises(TypeError):
        tiny.call(mlx_vlm.generate, **temp)


@pytest.mark.parametrize("after", [0, 1, 5])
def test_error_after_k_tokens_raises_the_same_object(
    tiny: Tiny, mlx_vlm: Any, after: int
) -> None:
    """An error mid-answer raises; the caller gets the very object, with its frames."""
    planted = RuntimeError("decoder failed")
    with plant_fault(planted, after_tokens=after) as record, pytest.raises(
        RuntimeError
    ) as info:
        tiny.call(mlx_vlm.generate, max_tokens=8)
    assert info.value is planted
    assert record.fired == 1
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "generate_step" in frames  # the frame that raised it is still there


@pytest.mark.parametrize("after", [1, 5])
def test_cut_answer_was_returned_as_complete_without_the_patch(
    tiny: Tiny, mlx_vlm: Any, release: Release, unpatched: None, after: int
) -> None:
    """The defect the previous test fixes: a cut answer that looks finished."""
    with plant_fault(RuntimeError("decoder failed"), after_tokens=after):
        if release.wired_limit == "swallows":
            result = tiny.call(mlx_vlm.generate, max_tokens=8)
            assert _tokens(result) == after
        else:
            with pytest.raises(Exception, match="decoder failed|metal|max_recommended"):
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
    tiny: Tiny, mlx_vlm: Any, release: Release, unpatched: None
) -> None:
    """The defect: Ctrl-C in the middle of a generation ended it 'normally'."""
    with plant_fault(KeyboardInterrupt, after_tokens=2):
        if release.wired_limit == "swallows":
            assert _tokens(tiny.call(mlx_vlm.generate, max_tokens=8)) == 2
        else:
            with pytest.raises((KeyboardInterrupt, KeyError, RuntimeError)):
                tiny.call(mlx_vlm.generate, max_tokens=8)


def test_verbose_true_raises_instead_of_a_silent_empty_result(
    tiny: Tiny, mlx_vlm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """verbose=True used to turn any error into an empty result on 0.3.2-0.3.10."""
    planted = ValueError("bad argument")
    with plant_fault(planted, after_tokens=0), pytest.raises(ValueError) as info:
        tiny.call(mlx_vlm.generate, max_tokens=8, verbose=True)
    assert info.value is planted
    capsys.readouterr()


def test_stream_generate_raises_the_real_error(tiny: Tiny, mlx_vlm: Any) -> None:
    """stream_generate: items before the error arrive, then the error itself."""
    planted = ValueError("bad argument")
    items: list[Any] = []
    with plant_fault(planted, after_tokens=3), pytest.raises(ValueError) as info:
        items.extend(tiny.stream(mlx_vlm.stream_generate, max_tokens=8))
    assert info.value is planted
    assert len(items) == 3


def test_stream_generate_ended_empty_without_the_patch(
    tiny: Tiny, mlx_vlm: Any, release: Release, unpatched: None
) -> None:
    """The defect: an error before the first token made the stream end silently."""
    with plant_fault(ValueError("bad argument"), after_tokens=0):
        if release.wired_limit == "swallows":
            assert list(tiny.stream(mlx_vlm.stream_generate)) == []
        else:
            with pytest.raises((ValueError, KeyError, RuntimeError)):
                list(tiny.stream(mlx_vlm.stream_generate))


def test_reference_captured_before_the_patch_is_fixed_too(
    tiny: Tiny, mlx_vlm: Any
) -> None:
    """``from mlx_vlm import generate`` before the patch: errors and empties are safe."""
    mlx_vlm_safe.unpatch()
    captured = mlx_vlm.generate
    mlx_vlm_safe.patch()
    assert captured is not mlx_vlm.generate
    planted = ValueError("bad argument")
    with plant_fault(planted, after_tokens=0), pytest.raises(ValueError) as info:
        tiny.call(captured)
    assert info.value is planted
    with empty_stream():
        result = tiny.call(captured)
    assert _text(result) == ""


def test_empty_stream_returns_the_release_shape_empty(
    tiny: Tiny, mlx_vlm: Any, release: Release
) -> None:
    """Nothing generated, no error: an empty result of the release's type."""
    for verbose in (False, True):
        with empty_stream():
            result = tiny.call(mlx_vlm.generate, verbose=verbose)
        assert result is not None
        assert _shape_ok(result, release)
        assert _text(result) == ""
        assert mlx_vlm_safe.last_outcome() == mlx_vlm_safe.Outcome("empty", 0)


def test_empty_stream_crashed_without_the_patch(
    tiny: Tiny, mlx_vlm: Any, release: Release, unpatched: None
) -> None:
    """The defect: upstream generate() dereferences the missing last item."""
    with empty_stream():
        if release.empty_stream == "unguarded":
            with pytest.raises(AttributeError, match="NoneType"):
                tiny.call(mlx_vlm.generate)
        else:
            assert _text(tiny.call(mlx_vlm.generate)) == ""


def test_wrapped_stream_never_ends_empty_where_generate_is_unguarded(
    tiny: Tiny, mlx_vlm: Any, release: Release
) -> None:
    """stream_generate itself yields one empty item rather than nothing."""
    with empty_stream():
        items = list(tiny.stream(mlx_vlm.stream_generate))
    expected = 1 if release.empty_stream != "guarded" else 0
    assert len(items) == expected
    assert mlx_vlm_safe.last_outcome() == mlx_vlm_safe.Outcome("empty", 0)


@pytest.mark.parametrize("bad", ["8", -1, 2.5, True])
def test_max_tokens_that_would_never_stop_is_refused_at_once(
    tiny: Tiny, mlx_vlm: Any, bad: object
) -> None:
    """A str or negative max_tokens made mlx-vlm generate forever; now: an error."""
    with pytest.raises((TypeError, ValueError), match="max_tokens"):
        tiny.call(mlx_vlm.generate, max_tokens=bad)
    with pytest.raises((TypeError, ValueError), match="max_tokens"):
        tiny.stream(mlx_vlm.stream_generate, max_tokens=bad)


def test_missing_image_is_a_clear_error_at_once(tiny: Tiny, mlx_vlm: Any) -> None:
    """A bad image path is the caller's error: raised, not retried, not hidden."""
    with pytest.raises((ValueError, OSError), match="nope"):
        tiny.call(mlx_vlm.generate, image=["/nope/missing.png"])


def test_caller_built_pixel_values_error_is_real(tiny: Tiny, mlx_vlm: Any) -> None:
    """Caller-built arrays of the wrong kind: the real error, not the None defect."""
    with pytest.raises(Exception) as info:
        tiny.call(
            mlx_vlm.generate,
            input_ids=np.array([[2, 5, 6]]),
            pixel_values=np.zeros((1, 3, 32, 32)),
            mask=None,
        )
    assert NONE_DEFECT not in str(info.value)


def test_max_tokens_zero(tiny: Tiny, mlx_vlm: Any, release: Release) -> None:
    """max_tokens=0: the release's own answer, never the None defect."""
    try:
        result = tiny.call(mlx_vlm.generate, max_tokens=0)
    except UnboundLocalError:
        assert release.layout in ("utils", "module")  # fixed upstream in 0.6
    else:
        assert _tokens(result) == 0
