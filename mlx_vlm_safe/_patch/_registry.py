"""Every replacement made, by identity: what makes patch and unpatch idempotent.

Strictly private. The rules, from wrapt's monkey-patching guide and from what
went wrong for ddtrace, OpenTelemetry and gevent users:

* Patch module globals, not just exported names: ``generate()`` looks up
  ``stream_generate`` and ``stream_generate()`` looks up ``wired_limit`` in
  their module's globals *at call time*, so replacing those globals fixes
  every caller, including one holding a reference captured before the patch.
* Rebind every by-name copy in every loaded ``mlx_vlm*`` module, and again
  in each ``mlx_vlm*`` module imported later (the post-import hook).
* Replace a value only if it *is* the original (identity), with one
  replacement per original: never a wrapper around a wrapper, never somebody
  else's wrapper touched. Restoring puts back exactly the objects replaced,
  where our replacement is still the one in place.
* A method is replaced on its class (the replacement's ``owners``), so that
  instances made before the patch, such as a loaded processor's detokenizer,
  see it too.

The caller (``_api``) holds the lock around every method.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import NamedTuple

from .._hook import is_target
from ._plan import Replacement

#: Where an original is bound: a module's globals, or a class's attributes.
Namespace = ModuleType | type


class Rebinding(NamedTuple):
    """One ``owner.name`` that was rebound (or found bound) to a replacement."""

    owner: Namespace
    name: str
    original: object
    replacement: object


def qualified(owner: Namespace, name: str) -> str:
    """``owner.name`` as a dotted path (``module.Class.method`` for a class)."""
    if isinstance(owner, ModuleType):
        return f"{owner.__name__}.{name}"
    return f"{owner.__module__}.{owner.__qualname__}.{name}"


def loaded_mlx_vlm_modules() -> list[ModuleType]:
    """Every loaded ``mlx_vlm*`` module."""
    return [
        m
        for name, m in list(sys.modules.items())
        if is_target(name) and isinstance(m, ModuleType)
    ]


class Registry:
    """The replacements in force and every binding made to them."""

    def __init__(self) -> None:
        self.replacements: dict[int, Replacement] = {}  # by id(original)
        self._originals: dict[int, object] = {}  # id(replacement) -> original
        self.rebound: list[Rebinding] = []

    def install(self, planned: Iterable[Replacement]) -> None:
        """Forget earlier state, take ``planned`` and rebind every loaded module."""
        self.replacements = {id(r.original): r for r in planned}
        self._originals = {
            id(r.replacement): r.original for r in self.replacements.values()
        }
        self.rebound = []
        for module in loaded_mlx_vlm_modules():
            self.sweep(module)
        for owner in self._owners():
            self.sweep(owner)

    def _owners(self) -> list[type]:
        """The classes holding replaced methods, each once."""
        found = (o for r in self.replacements.values() for o in r.owners)
        return list(dict.fromkeys(found))

    def sweep(self, namespace: Namespace) -> None:
        """Rebind every attribute of ``namespace`` that is one of the originals.

        An attribute that already holds a replacement (a module imported after
        the patch copied it by name, ``from ..generate import generate``) is
        recorded too, so that restoring gives it the original back.
        """
        for name, value in list(vars(namespace).items()):
            entry = self.replacements.get(id(value))
            if entry is not None and entry.original is value:
                setattr(namespace, name, entry.replacement)
                self.rebound.append(
                    Rebinding(namespace, name, value, entry.replacement)
                )
                continue
            original = self._originals.get(id(value))
            if (
                original is not None
                and self.replacements[id(original)].replacement is value
            ):
                self.rebound.append(Rebinding(namespace, name, original, value))

    def restore(self, warn: Callable[[str], None]) -> None:
        """Put every original back where our replacement still is; forget all."""
        for binding in reversed(self.rebound):
            owner, name = binding.owner, binding.name
            if vars(owner).get(name) is binding.replacement:
                setattr(owner, name, binding.original)
            else:
                warn(
                    f"{qualified(owner, name)} was replaced by someone else after "
                    "the patch; left as it is"
                )
        self.rebound = []
        self.replacements = {}
        self._originals = {}

    def originals(self) -> list[object]:
        """The objects replaced, for the report's stale-reference search."""
        return [r.original for r in self.replacements.values()]

    def targets(self) -> dict[str, list[str]]:
        """Fix name -> every ``mlx_vlm*`` attribute bound to its replacement now.

        Read from the modules, not from our log of rebinds: modules imported
        after the patch bind our replacement directly, and those count.
        """
        ours = {id(r.replacement): r for r in self.replacements.values()}
        found: dict[str, list[str]] = {}
        namespaces: list[Namespace] = [*loaded_mlx_vlm_modules(), *self._owners()]
        for namespace in namespaces:
            for name, value in list(vars(namespace).items()):
                entry = ours.get(id(value))
                if entry is not None and entry.replacement is value:
                    found.setdefault(entry.fix, []).append(qualified(namespace, name))
        return found
