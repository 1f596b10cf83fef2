"""Run generations in a process whose address space is capped at run time.

Used by ``tests/patch/test_memory_capped.py`` (one fresh interpreter per run):

    python _memory_runner.py CHECKPOINT ROOM_BYTES PLAN

The model is loaded and one small generation warms every code path up; then
``RLIMIT_AS`` is lowered to the address space in use plus ``ROOM_BYTES``, and
the steps of ``PLAN`` run in order (``;``-separated):

* ``N``: ``generate(max_tokens=N)`` with the policy in force;
* ``once:N``: the same inside ``retries_disabled()``;
* ``ladder:A,B``: ``configure(ladder=({"max_tokens": A}, {"max_tokens": B}))``;
* ``stream:N``: iterate ``stream_generate(max_tokens=N)``, counting items;
* ``unknown``: make the pre-flight estimate unknown (in-flight check only);
  ``known``: undo that.

Each step prints one JSON line: ``{"step", "ok", "tokens", "error", "attempts"}``.
``MLX_VLM_SAFE_DISABLE=1`` in the environment runs mlx-vlm unpatched.
"""

from __future__ import annotations

import json
import os
import resource
import sys


def _address_space() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:  # noqa: PLR0915 - one flat script, steps read in order
    checkpoint, room, plan = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    import mlx_vlm

    import mlx_vlm_safe
    from mlx_vlm_safe.testing import tiny_image_path, tiny_prompt

    patched = mlx_vlm_safe.is_patched()
    if patched:
        # No sleeping between attempts; the margin the test sizes its room for.
        mlx_vlm_safe.configure(wait_base=0.0, wait_max=0.0, memory_margin=2**20)
    model, processor = mlx_vlm.load(checkpoint)
    prompt = tiny_prompt(processor, model.config, "Describe the picture.")
    image = [str(tiny_image_path(os.path.dirname(checkpoint)))]

    def generate(max_tokens: int) -> int:
        result = mlx_vlm.generate(
            model, processor, prompt, image=image, max_tokens=max_tokens, verbose=False
        )
        outcome = mlx_vlm_safe.last_outcome() if patched else None
        if outcome is not None:
            return outcome.generation_tokens
        return int(getattr(result, "generation_tokens", -1))

    from mlx_vlm_safe._patch._memory import _estimate

    inspect_model = _estimate._inspect
    generate(8)
    soft = _address_space() + room
    resource.setrlimit(resource.RLIMIT_AS, (soft, resource.RLIM_INFINITY))
    print(json.dumps({"capped": soft, "room": room}), flush=True)
    for step in plan.split(";"):
        line: dict[str, object] = {"step": step, "ok": False}
        try:
            if step in ("unknown", "known"):
                from mlx_vlm_safe._patch._memory import _estimate

                unknown = _estimate.Architecture(reason="made unknown by the test")
                _estimate._cache[:] = []
                _estimate._inspect = (  # type: ignore[assignment]
                    (lambda model, found=unknown: found)
                    if step == "unknown"
                    else inspect_model
                )
                line["ok"] = True
            elif step.startswith("ladder:"):
                a, b = (int(v) for v in step[len("ladder:") :].split(","))
                mlx_vlm_safe.configure(ladder=({"max_tokens": a}, {"max_tokens": b}))
                line["ok"] = True
            elif step.startswith("once:"):
                with mlx_vlm_safe.retries_disabled():
                    line["tokens"] = generate(int(step[len("once:") :]))
                line["ok"] = True
            elif step.startswith("stream:"):
                count = 0
                try:
                    for _ in mlx_vlm.stream_generate(
                        model,
                        processor,
                        prompt,
                        image=image,
                        max_tokens=int(step[len("stream:") :]),
                    ):
                        count += 1
                finally:
                    line["tokens"] = count
                line["ok"] = True
            else:
                line["tokens"] = generate(int(step))
                line["ok"] = True
        except MemoryError as exc:
            line["error"] = f"MemoryError: {exc}"
            attempts = getattr(exc, "mlx_vlm_safe_attempts", ())
            line["attempts"] = [
                [a.number, dict(a.changes), a.error_type] for a in attempts
            ]
        if patched and line["ok"] and mlx_vlm_safe.last_attempts():
            line["attempts"] = [
                [a.number, dict(a.changes), a.error_type]
                for a in mlx_vlm_safe.last_attempts()
            ]
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
