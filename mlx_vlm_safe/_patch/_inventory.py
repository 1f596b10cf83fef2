"""Facts about the installation that only the report needs.

Strictly private. These are slow-ish (reading package metadata walks
``site-packages``; looking for stale references walks every loaded module), so
they run when somebody asks for a report, never on the import or call path.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import ModuleType

from .._hook import is_target

_ABSENT = object()


def metadata_version() -> str | None:
    """``mlx-vlm``'s version according to package metadata, if it has any.

    Forks install the same ``mlx_vlm`` package under another distribution
    name, so ``None`` here beside a ``__version__`` means "a fork".
    """
    from importlib import metadata

    try:
        return metadata.version("mlx-vlm")
    except metadata.PackageNotFoundError:
        return None


#: ``distributions()``'s answer and the ``sys.path`` it was read under.
_SHIPPERS: tuple[tuple[str, ...], tuple[str, ...]] | None = None


def distributions() -> tuple[str, ...]:
    """Every installed distribution that ships the ``mlx_vlm`` package.

    Read once per process and kept: ``packages_distributions()`` reads the
    file list of *every* installed distribution (0.17 s for 84 of them, 0.5 s
    for the 197 of a GPU box), and ``report()`` and ``unpatch()`` are called
    often (each ``unpatch()`` returns a report). It is read again only if
    ``sys.path`` changed, the one ordinary way for the answer to change within
    a process (installing a package into a running interpreter's own
    site-packages is not one we follow).
    """
    global _SHIPPERS  # noqa: PLW0603 - one answer per process is the point
    path = tuple(sys.path)
    cached = _SHIPPERS
    if cached is not None and cached[0] == path:
        return cached[1]
    from importlib import metadata

    try:
        found = metadata.packages_distributions().get("mlx_vlm", ())
    except Exception:  # metadata of a broken install must not break a report
        return ()
    names = tuple(sorted(set(found)))
    _SHIPPERS = (path, names)
    return names


def unreachable(originals: Iterable[object]) -> tuple[str, ...]:
    """``module.attribute`` names outside mlx-vlm still bound to an original.

    These were captured (``from mlx_vlm import generate``) before the patch.
    We do not rebind other people's modules, but we say where they are.
    """
    wanted = {id(o): o for o in originals}
    if not wanted:
        return ()
    found: list[str] = []
    for name, module in list(sys.modules.items()):
        if is_target(name) or not isinstance(module, ModuleType):
            continue
        if name.startswith("mlx_vlm_safe"):
            continue
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        for attr, value in items:
            if wanted.get(id(value), _ABSENT) is value:
                found.append(f"{name}.{attr}")
    return tuple(sorted(found))
