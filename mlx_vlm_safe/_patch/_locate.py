"""Find the real generation objects of whatever mlx-vlm is loaded.

Strictly private. mlx-vlm moved ``generate`` three times (``mlx_vlm.utils`` in
0.1.x-0.2.0, the module ``mlx_vlm.generate`` in 0.3.0-0.5.0, the package
``mlx_vlm.generate.dispatch`` from 0.6.0) and the attribute
``mlx_vlm.generate`` is sometimes the function and sometimes the module. We
never go by version: we follow the objects. The function's ``__module__`` names
its home, and ``generate`` and ``stream_generate`` look up ``stream_generate``,
``wired_limit`` and ``generate_step`` in their own module globals at call time,
which is exactly where a fix must be put.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import types
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Literal, TypeVar

from . import _mlx

Kind = Literal["utils", "module", "package", "unknown"]

_KINDS: Mapping[str, Kind] = {
    "mlx_vlm.utils": "utils",
    "mlx_vlm.generate": "module",
    "mlx_vlm.generate.dispatch": "package",
}

#: Keywords the retry ladder may lower, with the fallback default we assume
#: when the release does not tell us its own.
LADDER_KEYWORDS = ("max_tokens", "prefill_step_size")


@dataclasses.dataclass(frozen=True)
class Located:
    """The original objects of the loaded release (never our wrappers)."""

    kind: Kind
    home: str | None
    generate: Callable[..., Any] | None
    stream_generate: Callable[..., Any] | None
    wired_limit: Callable[..., Any] | None
    result_class: type | None
    accepted_kwargs: frozenset[str] | None
    defaults: Mapping[str, object]
    #: The mlx stream generation runs under (0.1.25+), if the release has one.
    generation_stream: object = None
    #: The streaming detokenizer of byte-level BPE tokenizers, if loaded.
    bpe_detokenizer: type | None = None
    #: The ``generate_step`` that ``stream_generate`` looks up at call time.
    generate_step: Callable[..., Any] | None = None


F = TypeVar("F", bound=Callable[..., Any])


def mark(wrapper: F, original: Callable[..., Any]) -> F:
    """Copy name, docs and ``__wrapped__``; mark as ours so we never stack."""
    functools.update_wrapper(wrapper, original)
    wrapper.__mlx_vlm_safe__ = True  # type: ignore[attr-defined]
    return wrapper


def with_globals(fn: Callable[..., Any], **globals_: object) -> Callable[..., Any]:
    """A copy of ``fn`` that resolves the given globals privately.

    The probes run a release's own code objects this way, with fakes in
    place of what they call, and touch nothing in ``mlx_vlm``.
    """
    copy = types.FunctionType(
        fn.__code__,
        {**fn.__globals__, **globals_},
        fn.__name__,
        fn.__defaults__,
        fn.__closure__,
    )
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


def unwrap(obj: object) -> object:
    """Peel off our own wrappers (marked ``__mlx_vlm_safe__``), nobody else's."""
    while getattr(obj, "__mlx_vlm_safe__", False):
        obj = obj.__wrapped__  # type: ignore[attr-defined]
    return obj


def _function(obj: object) -> Callable[..., Any] | None:
    obj = unwrap(obj)
    return obj if inspect.isfunction(obj) else None


def locate(package: ModuleType) -> Located:
    """Locate ``generate`` and what it depends on, starting from ``mlx_vlm``."""
    generate = _function(package.__dict__.get("generate"))
    if generate is None:
        # 0.1.x-0.2.0 after the CLI module rebound the attribute to itself.
        utils = sys.modules.get("mlx_vlm.utils")
        generate = _function(getattr(utils, "__dict__", {}).get("generate"))
    if generate is None:
        # A layout we do not know: still give a callable the generic layer.
        fallback = unwrap(package.__dict__.get("generate"))
        if callable(fallback) and not isinstance(fallback, ModuleType):
            return Located("unknown", None, fallback, None, None, None, None, {})
        return Located("unknown", None, None, None, None, None, None, {})
    home = generate.__module__
    stream = _function(generate.__globals__.get("stream_generate"))
    if stream is None:  # 0.1.0-0.1.6 export no stream from the package
        stream = _function(package.__dict__.get("stream_generate"))
    scope = stream.__globals__ if stream is not None else generate.__globals__
    wired = _function(scope.get("wired_limit"))
    result_class = scope.get("GenerationResult") or generate.__globals__.get(
        "GenerationResult"
    )
    if not (isinstance(result_class, type) and dataclasses.is_dataclass(result_class)):
        result_class = None
    step = _function(scope.get("generate_step"))
    accepted, defaults = _keywords(generate, stream, step, scope)
    return Located(
        kind=_KINDS.get(home, "unknown"),
        home=home,
        generate=generate,
        stream_generate=stream,
        wired_limit=wired,
        result_class=result_class,
        accepted_kwargs=accepted,
        defaults=defaults,
        generation_stream=find_stream(scope),
        bpe_detokenizer=_bpe_detokenizer(),
        generate_step=step,
    )


def _bpe_detokenizer() -> type | None:
    """``BPEStreamingDetokenizer``, from the module every release keeps it in.

    Read from ``sys.modules`` only (the patch never imports): ``import
    mlx_vlm`` loads ``mlx_vlm.tokenizer_utils`` in every known release.
    """
    module = sys.modules.get("mlx_vlm.tokenizer_utils")
    found = getattr(module, "BPEStreamingDetokenizer", None)
    return found if isinstance(found, type) else None


#: The module global mlx-vlm's generation code runs under (0.1.22+).
STREAM_NAME = "generation_stream"


def find_stream(scope: Mapping[str, object]) -> object | None:
    """The release's generation stream, if ``scope`` holds one."""
    mx = _mlx.core()
    value = scope.get(STREAM_NAME)
    kinds = tuple(
        k
        for k in (getattr(mx, "Stream", None), getattr(mx, "ThreadLocalStream", None))
        if isinstance(k, type)
    )
    return value if kinds and isinstance(value, kinds) else None


def _keywords(
    generate: Callable[..., Any],
    stream: Callable[..., Any] | None,
    step: Callable[..., Any] | None,
    scope: Mapping[str, Any],
) -> tuple[frozenset[str] | None, Mapping[str, object]]:
    """Keywords the release accepts, and its defaults for the ladder keywords.

    ``generate(**kwargs)`` forwards to ``stream_generate(**kwargs)`` and then
    to ``generate_step``; 0.6+ also publishes them as ``GenerateKwargs``. A
    keyword none of them names is never injected by the retry ladder, so an old
    release never sees an argument it does not know.
    """
    names: set[str] = set()
    defaults: dict[str, object] = {}
    for fn in (generate, stream, step):
        if fn is None:
            continue
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            names.add(param.name)
            if param.name in LADDER_KEYWORDS and param.default is not param.empty:
                defaults.setdefault(param.name, param.default)
    typed = scope.get("GenerateKwargs")
    names.update(getattr(typed, "__annotations__", {}))
    if isinstance(scope.get("DEFAULT_MAX_TOKENS"), int):
        defaults.setdefault("max_tokens", scope["DEFAULT_MAX_TOKENS"])
    return frozenset(names), defaults
