"""Concurrent generations in a process whose address space is capped.

Used by ``tests/patch/test_memory_load.py`` (one fresh interpreter per run):

    python _concurrent_runner.py CHECKPOINT ROOM_BYTES WORKERS MAX_TOKENS ROUNDS [MODE]

The model is loaded, ``WORKERS`` threads are created and each warms up with
an 8-token call (threads need address space of their own: servers create
theirs before they are busy), then ``RLIMIT_AS`` is lowered to the address
space in use plus ``ROOM_BYTES``. Each round, every worker calls
``generate(max_tokens=MAX_TOKENS)`` at the same moment (a barrier); after the
rounds one call of the same size runs alone. ``MODE``: ``default``,
``nowait`` (``memory_wait=0``) or ``noshorten`` (``memory_shorten=False``).

Prints one JSON line per call: ``{"round", "worker", "tokens", "shortened",
"error"}`` (round ``"alone"`` for the last call), then the address space and
resident size before the first round and after the last, and the ledger.
``MLX_VLM_SAFE_DISABLE=1`` runs mlx-vlm unpatched.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time


def _statm() -> tuple[int, int]:
    with open("/proc/self/statm", "rb") as f:
        fields = f.read().split()
    page = os.sysconf("SC_PAGE_SIZE")
    return int(fields[0]) * page, int(fields[1]) * page


def main() -> None:  # noqa: PLR0915 - one flat script, steps read in order
    checkpoint, room = sys.argv[1], int(sys.argv[2])
    workers, max_tokens, rounds = (int(v) for v in sys.argv[3:6])
    mode = sys.argv[6] if len(sys.argv) > 6 else "default"
    import mlx_vlm

    import mlx_vlm_safe
    from mlx_vlm_safe.testing import tiny_image_path, tiny_prompt

    patched = mlx_vlm_safe.is_patched()
    if patched:
        # A generous wait: how long the last of the queue waits depends on
        # how busy the machine is, and the wait limit is not what is tested.
        settings: dict[str, object] = {
            "wait_base": 0.0,
            "wait_max": 0.0,
            "memory_wait": 900,
        }
        if mode == "nowait":
            settings["memory_wait"] = 0
        elif mode == "noshorten":
            settings["memory_shorten"] = False
        mlx_vlm_safe.configure(**settings)
    model, processor = mlx_vlm.load(checkpoint)
    prompt = tiny_prompt(processor, model.config, "Describe the picture.")
    image = [str(tiny_image_path(os.path.dirname(checkpoint)))]
    lock = threading.Lock()

    def call(round_: object, worker: int, tokens: int) -> None:
        line: dict[str, object] = {"round": round_, "worker": worker}
        started = time.monotonic()
        try:
            result = mlx_vlm.generate(
                model, processor, prompt, image=image, max_tokens=tokens
            )
            outcome = mlx_vlm_safe.last_outcome() if patched else None
            line["tokens"] = (
                outcome.generation_tokens
                if outcome is not None
                else int(getattr(result, "generation_tokens", -1))
            )
            line["shortened"] = bool(outcome is not None and outcome.shortened)
            if patched and line["shortened"]:
                line["attempts"] = [
                    [a.number, dict(a.changes), a.error_type]
                    for a in mlx_vlm_safe.last_attempts()
                ]
        except Exception as exc:  # reported, never a dead worker and a hung barrier
            line["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        line["seconds"] = round(time.monotonic() - started, 2)
        if round_ != "warm":
            with lock:
                print(json.dumps(line), flush=True)

    go = [threading.Barrier(workers + 1) for _ in range(rounds + 1)]
    done = [threading.Barrier(workers + 1) for _ in range(rounds + 1)]

    def worker(index: int) -> None:
        call("warm", index, 8)
        go[0].wait()
        for r in range(rounds):
            go[r + 1].wait()
            call(r + 1, index, max_tokens)
            done[r + 1].wait()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    go[0].wait()  # every worker warmed up
    space, resident = _statm()
    resource.setrlimit(resource.RLIMIT_AS, (space + room, resource.RLIM_INFINITY))
    print(json.dumps({"capped": space + room, "before": [space, resident]}), flush=True)
    for r in range(rounds):
        go[r + 1].wait()
        done[r + 1].wait()
    for thread in threads:
        thread.join()
    print(json.dumps({"after_rounds": list(_statm())}), flush=True)
    call("alone", -1, max_tokens)
    if patched:
        from mlx_vlm_safe._patch._memory._ledger import ledger

        print(json.dumps({"ledger": ledger.snapshot()}), flush=True)


if __name__ == "__main__":
    main()
