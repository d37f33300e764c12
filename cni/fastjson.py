"""JSON for the plugin through CPython's C accelerator ``_json``, and loading such C modules fast.

``json`` itself would import ``re`` and ``enum`` (milliseconds of the plugin's start-up); the C
scanner and encoder it wraps are all the plugin needs.
Part of the installed plugin program (``spiderbgp.plugin_package`` puts the modules of ``cni/`` one
after the other in one file): stdlib only, no import that the interpreter does not already have at
start-up, no top-level name another module of the program binds otherwise.
"""

from __future__ import annotations

import posix  # the C module behind os: importing os would cost a millisecond of start-up
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def c_module(name: str) -> Any:
    """The C module ``name``, loaded by its file name from the interpreter's ``lib-dynload`` directory
    when it is a shared library there, else imported (ImportError when it does not exist).

    ``import`` would look for it along ``sys.path`` first, and set up a finder for ``lib-dynload``
    (~0.2 ms of the plugin's start-up); the path is what that search would find.
    """
    module = sys.modules.get(name)
    if module is not None:
        return module
    if name not in sys.builtin_module_names:
        try:
            bootstrap = sys.modules["_frozen_importlib"]
            external = sys.modules["_frozen_importlib_external"]
            directory = next(p for p in sys.path if p.endswith("/lib-dynload"))
            path = f"{directory}/{name}{external.EXTENSION_SUFFIXES[0]}"
            posix.stat(path)
            loader = external.ExtensionFileLoader(name, path)
            return bootstrap._load(external.spec_from_file_location(name, path, loader=loader))
        except Exception:  # any surprise in that shortcut: the import statement decides
            pass
    return __import__(name)


# --- JSON through the C accelerator (``json`` itself would import ``re`` and ``enum``) -----------


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}  # noqa: RUF012 - read by the C scanner, which keeps its own memo

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not valid JSON")


def _refuse(obj: object) -> object:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def json_loads(text: str) -> object:
    """``json.loads`` with the same C scanner, minus NaN/Infinity; ValueError (or RecursionError) on
    bad input, nothing else.

    The scanner raises its syntax errors as ``json.decoder.JSONDecodeError``, which it looks up in
    ``sys.modules`` without importing: while ``json.decoder`` is not loaded (the plugin never loads
    it) such an error comes out as a SystemError without a message.  Then the text is parsed again by
    ``json`` itself, imported only on this error path, for the message with line and column.
    """
    try:
        _json = c_module("_json")
    except ImportError:  # pragma: no cover - CPython always has it
        return _stdlib_json_loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _json.make_scanner(_ScanContext())(text, start)
    except StopIteration as stop:
        raise ValueError(f"expecting a JSON value at offset {stop.value}") from None
    except SystemError:
        return _stdlib_json_loads(text)
    if text[end:].strip(" \t\n\r"):
        raise ValueError(f"extra data after the JSON value at offset {end}")
    return value


def _stdlib_json_loads(text: str) -> object:
    import json

    return json.loads(text, parse_constant=_ScanContext.parse_constant)


def json_dumps(value: object) -> str:
    """Compact ASCII JSON (``json.dumps(value, separators=(",", ":"))``)."""
    try:
        _json = c_module("_json")
    except ImportError:  # pragma: no cover
        import json

        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    encode = _json.make_encoder(
        {}, _refuse, _json.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return "".join(encode(value, 0))
