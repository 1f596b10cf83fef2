"""A post-import hook for ``mlx_vlm`` and its submodules.

Strictly private. Why not wrapt's ``register_post_import_hook``? wrapt is
slow to import (it pulls in ``asyncio`` and ``importlib.metadata``), and
``import mlx_vlm_safe`` must stay in the low milliseconds and import nothing
heavy until mlx-vlm itself is imported. This finder is the small part of
wrapt's importer that we need: it sits first on ``sys.meta_path``, lets the
real finders locate ``mlx_vlm*`` modules, and runs a callback right after each
one has executed. It is duck-typed (no ``importlib.abc``) for the same reason.
"""

from __future__ import annotations

import _thread
import sys

# Not ``typing.TYPE_CHECKING``: importing ``typing`` costs more than this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

PACKAGE = "mlx_vlm"


def is_target(name: str) -> bool:
    """Whether ``name`` is mlx-vlm's top-level package or one of its submodules."""
    return name == PACKAGE or name.startswith(PACKAGE + ".")


class _ChainedLoader:
    """Run the real loader, then the callback; look like the real loader."""

    def __init__(self, loader: Any, callback: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._callback = callback

    def __getattr__(self, name: str) -> Any:
        # Resource readers, get_source, is_package ...: all the real loader's.
        return getattr(self._loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Hand the module its real loader back before anything can look at it.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        try:
            self._callback(module)
        except Exception:  # an import must never fail because of us
            import logging

            logging.getLogger("mlx_vlm_safe").exception(
                "mlx_vlm_safe: post-import hook failed for %s", module.__name__
            )


class PostImportFinder:
    """A ``sys.meta_path`` finder that chains a callback onto ``mlx_vlm*`` loads."""

    def __init__(self, callback: Callable[[ModuleType], None]) -> None:
        self.callback = callback
        self._resolving: set[tuple[int, str]] = set()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        """Find ``fullname`` with the other finders and chain our loader on."""
        if not is_target(fullname):
            return None
        key = (_thread.get_ident(), fullname)
        if key in self._resolving:
            return None
        self._resolving.add(key)
        try:
            spec = _find_with_others(self, fullname, path, target)
        finally:
            self._resolving.discard(key)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ChainedLoader(spec.loader, self.callback)  # type: ignore[assignment]
        return spec


def _find_with_others(
    me: object, fullname: str, path: Sequence[str] | None, target: ModuleType | None
) -> ModuleSpec | None:
    for finder in list(sys.meta_path):
        find_spec = getattr(finder, "find_spec", None)
        if finder is me or find_spec is None:
            continue
        spec: ModuleSpec | None = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def install(callback: Callable[[ModuleType], None]) -> None:
    """Put one finder first on ``sys.meta_path``; later calls only swap the callback."""
    for finder in sys.meta_path:
        if isinstance(finder, PostImportFinder):
            finder.callback = callback
            return
    sys.meta_path.insert(0, PostImportFinder(callback))
