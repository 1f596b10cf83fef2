"""docs/api.md: the reference of every public name, made from the code.

``python tools/api_reference.py`` prints the page; ``--write`` writes it;
``--check`` exits 1 if the file on disk differs (what the test checks too,
``tests/test_api_reference.py``). The public names are what
``mlx_vlm_safe._PUBLIC`` lists plus ``mlx_vlm_safe.testing.__all__``: a name
added there appears here on the next ``--write``, with no change to this
tool. Each entry is the object's signature and its docstring, so the
reference says what the code says and nothing else; a public name without a
docstring is an error, not an empty entry.

Signatures are rendered from the annotations as written (the package uses
``from __future__ import annotations``), so the page is the same on every
Python the suite runs on.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, ForwardRef

if not __package__:  # run as a script: make ``tools`` importable
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tools.doc_pages import DOCS

PAGE = DOCS / "api.md"
_WRITE = "python tools/api_reference.py --write"

#: What each part of ``_PUBLIC`` is, for the page's section titles.
_PART_TITLES = {
    "._patch": "The patch",
    "._retry": "Retries",
    "._configure": "Settings",
}


def public_names() -> list[tuple[str, str, Any]]:
    """``(section, name, object)`` for every public name, in the lists' order."""
    package = importlib.import_module("mlx_vlm_safe")
    testing = importlib.import_module("mlx_vlm_safe.testing")
    found = [
        (_PART_TITLES.get(part, part.lstrip("._")), name, getattr(package, name))
        for part, names in package._PUBLIC.items()
        for name in names
    ]
    found += [
        ("mlx_vlm_safe.testing", name, getattr(testing, name))
        for name in testing.__all__
    ]
    return found


def _annotation(value: Any) -> str:
    if isinstance(value, ForwardRef):
        return value.__forward_arg__
    if isinstance(value, str):
        return value
    return inspect.formatannotation(value)


def _default(value: Any) -> str:
    text = repr(value)
    # An object's default repr holds its address: not the same twice.
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def signature(obj: Callable[..., Any], name: str) -> str:
    """``name(params) -> return``, annotations as written in the source."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    parts: list[str] = []
    star = slash = False
    for param in sig.parameters.values():
        kind = param.kind
        if kind is not param.POSITIONAL_ONLY and slash:
            parts.append("/")
            slash = False
        if kind is param.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = param.name
        if kind is param.POSITIONAL_ONLY:
            slash = True
        elif kind is param.VAR_POSITIONAL:
            text, star = "*" + text, True
        elif kind is param.VAR_KEYWORD:
            text = "**" + text
        if param.annotation is not param.empty:
            text += f": {_annotation(param.annotation)}"
        if param.default is not param.empty:
            sep = " = " if param.annotation is not param.empty else "="
            text += sep + _default(param.default)
        parts.append(text)
    if slash:
        parts.append("/")
    result = f"{name}({', '.join(parts)})"
    if sig.return_annotation is not sig.empty and not inspect.isclass(obj):
        result += f" -> {_annotation(sig.return_annotation)}"
    return result


_SECTION = re.compile(r"^(Args|Arguments|Attributes|Raises|Returns|Yields):$")


def _doc(obj: Any) -> str:
    """The docstring as Markdown.

    reST's double backticks and roles (``:func:`x```) become plain code
    spans, and the indented body of a Google-style section (``Args:``,
    ``Raises:`` ...) becomes a text block, which Markdown would otherwise run
    together into one paragraph.
    """
    text = (inspect.getdoc(obj) or "").replace("``", "`").strip()
    text = re.sub(r":\w+:`", "`", text)
    out: list[str] = []
    in_section = False
    for line in text.splitlines():
        if in_section and line and not line.startswith(" "):
            _close(out)
            in_section = False
        if not in_section and _SECTION.match(line):
            if out and out[-1]:
                out.append("")
            out += [f"**{line}**", "", "```text"]
            in_section = True
            continue
        out.append(line[4:] if in_section else line)
    if in_section:
        _close(out)
    return "\n".join(out).strip()


def _close(out: list[str]) -> None:
    """End a section's text block: no blank lines inside, one after."""
    while out and not out[-1]:
        out.pop()
    out += ["```", ""]


def _kind(obj: Any) -> str:
    """What a reader needs to know before the signature: what kind of name."""
    if not inspect.isclass(obj):
        wrapped = getattr(obj, "__wrapped__", None)
        return "context manager" if inspect.isgeneratorfunction(wrapped) else "function"
    kinds = (
        (issubclass(obj, BaseException), f"exception ({obj.__mro__[1].__name__})"),
        (bool(getattr(obj, "_is_protocol", False)), "protocol"),
        (dataclasses.is_dataclass(obj) and _frozen(obj), "frozen dataclass"),
        (dataclasses.is_dataclass(obj), "dataclass"),
        (issubclass(obj, tuple) and hasattr(obj, "_fields"), "named tuple"),
    )
    return next((kind for test, kind in kinds if test), "class")


def _frozen(cls: type) -> bool:
    params = getattr(cls, "__dataclass_params__", None)
    return bool(getattr(params, "frozen", False))


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    """A class's own public methods and properties (not the dataclass dunders)."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property) or inspect.isfunction(value):
            yield name, value
        elif isinstance(value, (classmethod, staticmethod)):
            yield name, value.__func__


def entry(name: str, obj: Any) -> list[str]:
    """One public name's section: heading, kind, signature, docstring, members."""
    doc = _doc(obj)
    if not doc:
        raise ValueError(f"public name {name!r} has no docstring")
    lines = [f"### `{name}`", "", f"*{_kind(obj)}*", ""]
    # An exception's and a protocol's signature say nothing (``*args,
    # **kwargs``) and vary between Python versions: their docstring and
    # members are the reference.
    if _kind(obj) != "protocol" and not (
        inspect.isclass(obj) and issubclass(obj, BaseException)
    ):
        lines += ["```text", signature(obj, name), "```", ""]
    lines += [doc, ""]
    if inspect.isclass(obj):
        for member, value in _members(obj):
            if isinstance(value, property):
                head = f"- `{name}.{member}` (property)"
                text = _doc(value)
            else:
                head = f"- `{signature(value, f'{name}.{member}')}`"
                text = _doc(value)
            first = text.split("\n\n")[0].replace("\n", " ")
            lines.append(f"{head}: {first}" if first else head)
        if lines[-1] != "":
            lines.append("")
    return lines


def _anchor(name: str) -> str:
    return name.lower()


def page() -> str:
    """The whole of docs/api.md."""
    names = public_names()
    sections: dict[str, list[tuple[str, Any]]] = {}
    for section, name, obj in names:
        sections.setdefault(section, []).append((name, obj))
    lines = [
        "# API reference",
        "",
        "[README](../README.md) · [all pages](../README.md#contents)",
        "",
        "<!-- generated: python tools/api_reference.py --write; do not edit -->",
        "Every public name of `mlx_vlm_safe` and `mlx_vlm_safe.testing`, with "
        "its signature and docstring, generated from the code "
        f"(`{_WRITE}`); `tests/test_api_reference.py` fails when a name is "
        "missing or the page is stale. Import them as `mlx_vlm_safe.NAME` and "
        "`mlx_vlm_safe.testing.NAME`.",
        "",
    ]
    for section, members in sections.items():
        links = " · ".join(f"[`{n}`](#{_anchor(n)})" for n, _ in members)
        lines.append(f"- **{section}**: {links}")
    lines.append("")
    for section, members in sections.items():
        lines += [f"## {section}", ""]
        for name, obj in members:
            lines += entry(name, obj)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    """Print the page, ``--write`` it, or ``--check`` it (exit 1 if stale)."""
    made = page()
    if argv == ["--write"]:
        PAGE.write_text(made, encoding="utf-8")
    elif argv == ["--check"]:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != made:
            print(f"{PAGE} is stale: run `{_WRITE}`", file=sys.stderr)
            return 1
    elif argv:
        print("usage: api_reference.py [--write | --check]", file=sys.stderr)
        return 2
    else:
        print(made, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
