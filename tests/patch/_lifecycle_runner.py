"""Run one lifecycle program in this fresh interpreter; print what happened as JSON.

Used by ``tests/patch/test_lifecycle_stateful.py``: import order is the point of those
programs, so each runs in its own interpreter, and this script imports
neither ``mlx_vlm`` nor ``mlx_vlm_safe`` until a step says so. The invariant
checks only duck-type our wrappers (the ``__mlx_vlm_safe__`` marker and
``__wrapped__``), so checking never imports anything either.

Input (a JSON file named on the command line): ``checkpoint``, ``image``,
``prompt`` and ``steps``, each step ``{"op": ..., ...}``. Output (the last line
on stdout): one observation per step: the status, the invariant violations
found after the step, and the outcome of every generation call it made.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

MAX_TOKENS = 3
WATCHED = ("generate", "stream_generate", "wired_limit")
KILL = "MLX_VLM_SAFE_DISABLE"


def _ours(value: object) -> bool:
    return bool(getattr(value, "__mlx_vlm_safe__", False))


def _unwrap(value: object) -> object:
    while _ours(value):
        value = value.__wrapped__  # type: ignore[attr-defined]
    return value


def _vlm_modules() -> list[ModuleType]:
    return [
        m
        for name, m in list(sys.modules.items())
        if (name == "mlx_vlm" or name.startswith("mlx_vlm."))
        and isinstance(m, ModuleType)
    ]


class Runner:
    """Executes steps and checks the invariants after each one."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.model: Any = None
        self.processor: Any = None
        self.captured: Callable[..., Any] | None = None
        # (module, attribute) -> the original object first seen there.
        self.originals: dict[tuple[str, str], object] = {}

    # ------------------------------------------------------------ helpers

    @property
    def safe(self) -> Any:
        return sys.modules.get("mlx_vlm_safe")

    def _load(self) -> None:
        if self.model is None:
            import mlx_vlm

            self.model, self.processor = mlx_vlm.load(self.spec["checkpoint"])

    def _plant(self, fault: str) -> tuple[Any, BaseException | None]:
        """A context manager planting ``fault`` and the exception it raises."""
        if fault == "none":
            return _nothing(), None
        from mlx_vlm_safe.testing import empty_stream, plant_fault

        if fault == "empty":
            return empty_stream(), None
        planted: BaseException
        if fault == "error0":
            planted = ValueError("planted before the first token")
            return plant_fault(planted, after_tokens=0), planted
        if fault == "error_k":
            planted = RuntimeError("planted after a token")
            return plant_fault(planted, after_tokens=1), planted
        if fault == "prefill":
            planted = ValueError("planted during prefill")
            return plant_fault(planted, during_prefill=True), planted
        if fault == "interrupt":
            planted = KeyboardInterrupt()
            return plant_fault(planted, after_tokens=1), planted
        raise ValueError(f"unknown fault {fault!r}")

    def _callable(self, via: str) -> tuple[Callable[..., Any], bool]:
        """The function a call goes through, and whether it is a stream."""
        import mlx_vlm

        if via == "captured":
            assert self.captured is not None
            return self.captured, False
        if via == "server":
            return sys.modules["mlx_vlm.server"].generate, False
        # Before 0.1.15 the package does not export stream_generate, and on
        # 0.1.x importing the CLI module rebinds mlx_vlm.generate to a module.
        home = sys.modules.get("mlx_vlm.utils")
        if via == "stream":
            stream = getattr(mlx_vlm, "stream_generate", None)
            return stream or home.stream_generate, True  # type: ignore[union-attr]
        function = mlx_vlm.generate
        if not callable(function) or isinstance(function, type(sys)):
            function = home.generate  # type: ignore[union-attr]
        return function, False

    def call(self, via: str, fault: str) -> dict[str, Any]:
        """One real generation; what the caller got, without judging it."""
        self._load()
        function, is_stream = self._callable(via)
        planter, planted = self._plant(fault)
        kwargs = {"image": [self.spec["image"]], "max_tokens": MAX_TOKENS}
        if not is_stream:
            kwargs["verbose"] = False
        outcome: dict[str, Any] = {"via": via, "fault": fault, "ok": True}
        items: list[Any] = []
        try:
            with planter:
                result = function(
                    self.model, self.processor, self.spec["prompt"], **kwargs
                )
                if is_stream:
                    items.extend(result)
                    result = items[-1] if items else None
        except BaseException as exc:  # Ctrl-C included: it is planted
            outcome.update(_error(exc, planted))
            outcome["items"] = len(items)
            return outcome
        outcome["items"] = len(items)
        # None from generate() is the defect; a stream may end with no item.
        outcome["none"] = result is None and not is_stream
        outcome["tokens"] = _tokens(result)
        outcome["text"] = _text(result)
        return outcome

    # ------------------------------------------------------------ steps

    def step(self, step: dict[str, Any]) -> list[dict[str, Any]]:
        """Execute one step; return the outcomes of the calls it made."""
        op = step["op"]
        if op == "import_vlm":
            importlib.import_module("mlx_vlm")
        elif op == "import_server":
            importlib.import_module("mlx_vlm.server")
        elif op == "capture":
            from mlx_vlm import generate

            self.captured = generate
        elif op == "import_safe":
            importlib.import_module("mlx_vlm_safe")
        elif op in ("patch", "unpatch"):
            getattr(importlib.import_module("mlx_vlm_safe"), op)()
        elif op == "kill_on":
            os.environ[KILL] = "1"
        elif op == "kill_off":
            os.environ.pop(KILL, None)
        elif op == "call":
            return [self.call(step["via"], step["fault"])]
        elif op == "thread_call":
            return [self._in_thread(lambda: self.call("attr", step["fault"]))]
        elif op == "threads":
            return self.threads(step["ops"])
        else:
            raise ValueError(f"unknown step {op!r}")
        return []

    def threads(self, ops: list[str]) -> list[dict[str, Any]]:
        """Threads patch/unpatch at once while this thread generates."""
        safe = importlib.import_module("mlx_vlm_safe")
        barrier = threading.Barrier(len(ops) + 1)
        errors: list[str] = []

        def work(op: str) -> None:
            barrier.wait()
            try:
                for _ in range(20):
                    getattr(safe, op)()
            except BaseException as exc:
                errors.append(f"{op}: {exc!r}")

        workers = [threading.Thread(target=work, args=(op,)) for op in ops]
        for worker in workers:
            worker.start()
        barrier.wait()
        outcomes = [self.call("attr", "none")]
        while any(w.is_alive() for w in workers):
            outcomes.append(self.call("attr", "none"))
        for worker in workers:
            worker.join()
        outcomes.extend({"ok": False, "thread_error": e} for e in errors)
        return outcomes

    def _in_thread(self, target: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        box: list[dict[str, Any]] = []
        worker = threading.Thread(target=lambda: box.append(target()))
        worker.start()
        worker.join()
        return box[0] if box else {"ok": False, "thread_error": "no outcome"}

    # ------------------------------------------------------------ invariants

    def observe(self) -> dict[str, Any]:
        """Status and every invariant violation visible now."""
        violations: list[str] = []
        safe = self.safe
        patched = bool(safe.is_patched()) if safe is not None else False
        status = safe.report(inventory=False).status if safe is not None else None
        installed: set[int] = set()  # originals our installed wrappers replace
        for module in _vlm_modules():
            for name in WATCHED:
                value = module.__dict__.get(name)
                if not callable(value) or isinstance(value, ModuleType):
                    continue
                where = f"{module.__name__}.{name}"
                if _ours(value):
                    if _ours(value.__wrapped__):
                        violations.append(f"two layers of our wrapper at {where}")
                    if not patched:
                        violations.append(f"{where} is our wrapper while not patched")
                    installed.add(id(_unwrap(value)))
                original = _unwrap(value)
                first = self.originals.setdefault((module.__name__, name), original)
                if first is not original:
                    violations.append(f"{where} wraps or is a different original")
        if patched:
            for module in _vlm_modules():
                for name in WATCHED:
                    value = module.__dict__.get(name)
                    if not _ours(value) and id(value) in installed:
                        where = f"{module.__name__}.{name}"
                        violations.append(f"{where} still holds the original")
        finders = [f for f in sys.meta_path if type(f).__name__ == "PostImportFinder"]
        if len(finders) > 1:
            violations.append(f"{len(finders)} post-import finders installed")
        return {"status": status, "patched": patched, "violations": violations}


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _error(exc: BaseException, planted: BaseException | None) -> dict[str, Any]:
    message = str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    return {
        "ok": False,
        "error": type(exc).__name__,
        "message": message[:200],
        "planted": planted is not None and exc is planted,
        "none_defect": isinstance(exc, AttributeError) and "NoneType" in message,
        "frames": len(frames),
    }


def _tokens(result: object) -> int | None:
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict):
        tokens = result[1].get("output_tokens")
        return tokens if isinstance(tokens, int) else None
    tokens = getattr(result, "generation_tokens", None)
    return tokens if isinstance(tokens, int) else None


def _text(result: object) -> str | None:
    if isinstance(result, tuple):
        result = result[0] if result else None
    text = result if isinstance(result, str) else getattr(result, "text", None)
    return text if isinstance(text, str) else None


def _steps(runner: Runner, steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for number, step in enumerate(steps):
        observation: dict[str, Any] = {"step": number, "op": step["op"]}
        try:
            observation["calls"] = runner.step(step)
        except BaseException as exc:
            observation["calls"] = []
            observation["raised"] = f"{type(exc).__name__}: {exc}"
        observation.update(runner.observe())
        yield observation


def main() -> int:
    """Run the program named on the command line; print the observations."""
    with open(sys.argv[1], encoding="utf-8") as handle:
        spec = json.load(handle)
    observations = list(_steps(Runner(spec), spec["steps"]))
    print(json.dumps(observations), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    # Skip interpreter finalisation: after mlx ran on a worker thread, mlx
    # aborts at exit in about half the runs ("terminate called without an
    # active exception"), with or without mlx_vlm_safe (mlx-vlm 0.3.5 and
    # 0.7.10, mlx 0.32.4). Everything this runner reports is printed by now.
    sys.stderr.flush()
    os._exit(code)
