"""Activate ``mlx_vlm_safe`` at interpreter start if ``MLX_VLM_SAFE_AUTOPATCH`` says so.

Strictly private. Imported at start-up by the ``mlx_vlm_safe_autopatch.pth``
line (only when the variable is set to something other than an "off"
spelling: unset, empty, 0/false/no/off cost one dictionary lookup and no
import) and by the ``sitecustomize`` that
``mlx-vlm-safe run`` puts on ``PYTHONPATH``. It is a top-level module on
purpose: importing anything inside the ``mlx_vlm_safe`` package runs that
package's import side effect, which *is* the activation, so the value has to
be judged before the package is touched.

It runs while ``site`` is still setting the interpreter up, so it never
raises: a value that is not a boolean gives one line on stderr and leaves the
patch off (we refuse to guess whether ``MLX_VLM_SAFE_AUTOPATCH=enable`` or
``=maybe`` means on; the spellings are those of ``MLX_VLM_SAFE_DISABLE``).

PYTEST_DONT_REWRITE: this module is imported before pytest starts (it is the
activation), while pytest marks it for assertion rewriting because it belongs
to a distribution with a ``pytest11`` entry point; the marker keeps pytest from
warning that it "cannot be rewritten" (fatal under ``-W error``).
"""

# No ``from __future__ import annotations``: at start-up every import counts,
# and ``str | None`` evaluates fine on Python 3.10+.
import os
import sys

VARIABLE = "MLX_VLM_SAFE_AUTOPATCH"
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"", "0", "false", "no", "off"})

#: Whether this interpreter imported ``mlx_vlm_safe`` at start-up because of
#: the variable (read by ``mlx-vlm-safe doctor``).
activated: bool = False
#: Why it did not, when the variable was set but could not be honoured.
problem: str | None = None


def decide(raw: str | None) -> bool | None:
    """``True``/``False`` for a valid value, ``None`` for a malformed one."""
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    return None


def _warn(message: str) -> None:
    global problem  # noqa: PLW0603 - one process-wide answer is the point
    problem = message
    if sys.stderr is not None:  # pythonw and some daemons have no stderr
        sys.stderr.write(f"mlx_vlm_safe: {message}\n")


def start() -> bool:
    """Import ``mlx_vlm_safe`` (which arms the patch) if the variable is true."""
    global activated  # noqa: PLW0603 - one process-wide answer is the point
    raw = os.environ.get(VARIABLE)
    wanted = decide(raw)
    if wanted is None:
        accepted = ", ".join(sorted(TRUE | (FALSE - {""})))
        _warn(
            f"{VARIABLE}={raw!r} is not a boolean (use one of: {accepted}); "
            "the patch was NOT activated at start-up"
        )
        return False
    if not wanted:
        return False
    try:
        import mlx_vlm_safe  # noqa: F401 - the import is the activation
    except ModuleNotFoundError as exc:
        if exc.name != "mlx_vlm_safe":
            _warn(f"{VARIABLE} is set but mlx_vlm_safe failed to import: {exc!r}")
        # Otherwise a foreign interpreter inherited `run`'s PYTHONPATH: not ours.
        return False
    except Exception as exc:  # start-up must go on whatever happens
        _warn(f"{VARIABLE} is set but mlx_vlm_safe failed to import: {exc!r}")
        return False
    activated = True
    return True


start()
