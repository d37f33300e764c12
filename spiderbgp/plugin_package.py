"""Packaging the ``spiderpool`` CNI plugin into the one file ``spiderbgp install-cni`` installs.

The program is built from whole modules of ``cni/`` (``PLUGIN_MODULES``, in dependency order): each
one's text less its ``from __future__`` import and its imports of the modules before it, which the
concatenation makes unnecessary.  A top-level name bound by two of them differently, or an import of
a project module that is not in the program (``cni.wire_agent``, say), is refused, so what runs in
the file is what runs, imported, in the tests.  Then ``render_plugin_file`` embeds the program's
bytecode and compressed source behind a ``#!`` line (see its docstring for why each step pays).
"""

from __future__ import annotations
import __future__

import ast
import binascii
import marshal
import zlib
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from types import CodeType
from typing import Any

import cni

PLUGIN_NAME = "spiderpool"
# The modules of the installed program, in the order they are put in it; the last one runs main.
PLUGIN_MODULES = ("wire_rules", "wire", "fastjson", "netconf", "agent_client", "spiderpool")
# The bytes a triple-quoted literal without escapes cannot hold (NUL, CR, quote, backslash).
_UNSAFE = b'\x00\r"\\'


def render_source(directory: Path | None = None, modules: tuple[str, ...] = PLUGIN_MODULES) -> str:
    """The installed program: the ``modules`` of ``directory`` (default: the ``cni`` package), whole,
    one after the other, less their ``from __future__`` imports, their imports of each other, their
    type-only ``if TYPE_CHECKING:`` blocks and what repeats a binding an earlier one made verbatim.
    ValueError when a module imports a project module outside ``modules`` (or one after it), a name
    it does not find there, or binds a top-level name an earlier module binds otherwise."""
    folder = directory or Path(cni.__file__).resolve().parent
    package = folder.name
    bound: dict[str, tuple[str, str]] = {}  # name -> (module, ast dump of its binding)
    parts: list[str] = []
    for module in modules:
        path = folder / f"{module}.py"
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, str(path))
        drop: set[int] = set()
        for node in tree.body:
            names, dump = _top_level_names(node), ast.dump(node)
            if (
                _is_future_import(node)
                or _is_type_only(node)
                or _project_import(node, package, module, bound, modules)
                or (names and all(bound.get(name, ("", ""))[1] == dump for name in names))
            ):  # the last: the very binding an earlier module made (``import sys``), made once
                drop.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
                continue
            for name in names:
                earlier = bound.get(name)
                if earlier is not None and earlier[1] != dump:
                    raise ValueError(
                        f"{package}/{module}.py: top-level name {name!r} is also bound by "
                        f"{package}/{earlier[0]}.py; in the one plugin program they would clash"
                    )
                bound[name] = (module, dump)
        lines = text.splitlines(keepends=True)
        kept = "".join(line for number, line in enumerate(lines, 1) if number not in drop)
        parts.append(f"# --- {package}/{module}.py ---\n{kept.rstrip()}\n\n\n")
    return "".join(parts).rstrip() + "\n"


def _is_type_only(node: ast.stmt) -> bool:
    """``if TYPE_CHECKING:`` (imports for the type checker, never run: TYPE_CHECKING is False)."""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
        and not node.orelse
    )


def _is_future_import(node: ast.stmt) -> bool:
    return isinstance(node, ast.ImportFrom) and node.module == "__future__"


def _project_import(
    node: ast.stmt, package: str, module: str, bound: dict[str, tuple[str, str]], modules: tuple[str, ...]
) -> bool:
    """Whether ``node`` imports from a module of ``package`` (then every name it imports must be
    bound by an earlier module of the program); ValueError for any other import of the package."""
    where = f"{package}/{module}.py"
    if isinstance(node, ast.Import) and any(a.name.split(".")[0] == package for a in node.names):
        raise ValueError(
            f"{where}: 'import {package}...' cannot be inlined; use 'from {package}.<module> import'"
        )
    if not isinstance(node, ast.ImportFrom) or (node.module or "").split(".")[0] != package or node.level:
        return False
    source = (node.module or "").partition(".")[2]
    if source not in modules[: modules.index(module)]:
        raise ValueError(
            f"{where}: imports {package}.{source}, which is not a module before it in the plugin program"
        )
    for alias in node.names:
        if alias.asname not in (None, alias.name) or bound.get(alias.name, ("",))[0] != source:
            raise ValueError(f"{where}: {alias.name!r} is not a top-level name of {package}/{source}.py")
    return True


def _top_level_names(node: ast.stmt) -> list[str]:
    """The names a top-level statement binds (type-only ``if TYPE_CHECKING:`` blocks bind none)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    if isinstance(node, ast.Assign):
        return [n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name)]
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _svarint(out: bytearray, value: int) -> None:
    """A signed varint of the code location table (6-bit chunks, bit 6 = more follow)."""
    value = (-value << 1) | 1 if value < 0 else value << 1
    while value >= 64:
        out.append(64 | (value & 63))
        value >>= 6
    out.append(value)


def _code_lines(code: CodeType) -> list[int | None]:
    """The line of every code unit of ``code`` and of the code objects it holds, in order."""
    out: list[int | None] = []
    for start, end, line in code.co_lines():
        out += [line] * ((end - start) // 2)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            out += _code_lines(const)
    return out


def _lines_only(code: CodeType) -> CodeType:
    """``code`` with a location table of line numbers only: CPython 3.11+'s "no column" entries (code
    13) instead of line+column entries, a third of the table's size.  Tracebacks keep their lines."""
    consts = tuple(_lines_only(c) if isinstance(c, CodeType) else c for c in code.co_consts)
    table = bytearray()
    line = code.co_firstlineno
    for start, end, lineno in code.co_lines():
        units = (end - start) // 2
        while units > 0:
            n = min(units, 8)
            if lineno is None:
                table.append(0x80 | 15 << 3 | (n - 1))  # no location
            else:
                table.append(0x80 | 13 << 3 | (n - 1))
                _svarint(table, lineno - line)
                line = lineno
            units -= n
    return code.replace(co_consts=consts, co_linetable=bytes(table))


def _compact(code: CodeType) -> CodeType:
    """``_lines_only(code)`` when this interpreter reads the table as we wrote it, else ``code``."""
    try:
        compact = _lines_only(code)
    except (ValueError, TypeError):
        return code
    return compact if _code_lines(compact) == _code_lines(code) else code


# Written into the plugin file and run there; render_plugin_file runs it on what it wrote as a check.
_DECODE = """\
def _decode(text, table, placeholders):
    parts = text.encode('latin-1').split(b'\\xff')
    rest = [placeholders[p[0] - 48 : p[0] - 47] + p[1:] for p in parts[1:]]
    return b''.join([parts[0], *rest]).translate(table)
"""


def literal_text(data: bytes) -> tuple[str, bytes, bytes]:
    """``data`` as the text of a triple-quoted literal that needs no escape processing, mostly ASCII.

    Returns ``(text, table, placeholders)`` for ``_decode`` (in ``_DECODE``), which gives ``data``
    back.  The 251 most frequent byte values become characters a literal can hold (ASCII first: one
    byte each in the UTF-8 file), the 5 rarest become ``\\xff`` and a digit.  ``_decode`` splits at
    ``\\xff`` (a memchr scan), puts in the digit's placeholder (one of the 5 byte values no character
    of ``text`` stands for) and maps every byte value back with ``table``: each step at C speed, no
    module to import.
    """
    safe = [b for b in range(1, 256) if b not in _UNSAFE]
    escape = safe.pop()
    placeholders = bytes([*_UNSAFE, escape])
    order = sorted(range(256), key=lambda b: -data.count(bytes((b,))))
    common, rare = order[: len(safe)], order[len(safe) :]
    table = bytearray(256)
    char_of: dict[int, bytes] = {}
    for value, char in zip(common, safe, strict=True):
        char_of[value] = bytes((char,))
        table[char] = value
    for digit, (value, placeholder) in enumerate(zip(rare, placeholders, strict=True)):
        char_of[value] = bytes((escape, 0x30 + digit))
        table[placeholder] = value
    encoded = b"".join([char_of[b] for b in data])
    if any(b in encoded for b in _UNSAFE):
        raise AssertionError("literal_text: an unsafe byte in the text")  # pragma: no cover
    return encoded.decode("latin-1"), bytes(table), placeholders


def render_plugin_file(python: str) -> str:
    """The installable plugin file: ``#!<python> -IS``, the program's bytecode, and its source.

    A script is compiled on every start (only imported modules get a ``.pyc``), which would cost
    more than everything else the plugin does; so the file carries the bytecode of the interpreter
    that renders it and runs that when the running interpreter has the same magic number, else it
    compiles the embedded source.  Render with the interpreter the shebang names to get the fast path.

    Start-up is what the runtime pays on every call, and the interpreter tokenizes every byte of a
    script before it runs a line (~7 us per KiB in a fresh process), so:
    - CODE is the marshalled bytecode as it is, as a latin-1 text in a triple-quoted literal (the four
      characters such a literal cannot hold stand in as code points U+0100..U+0103): no decoding
      module to load (binascii and zlib are shared libraries in many builds, ~1.3 ms with the
      decompression), one string literal without escapes (the parser's fast path);
    - docstrings, asserts and column positions are left out of the bytecode (line numbers stay);
    - SOURCE, needed only by another interpreter, is compressed (zlib, base64);
    - ``from __future__ import annotations`` is a compiler flag instead of an import (0.2 ms).
    """
    if not python.startswith("/") or any(c.isspace() for c in python):
        raise ValueError(
            f"python: {python!r} must be an absolute path without spaces (it goes on the #! line)"
        )
    flags = __future__.annotations.compiler_flag
    program = render_source()
    # optimize=2 drops docstrings and asserts from the bytecode (the source keeps them for readers).
    code = _compact(compile(program, PLUGIN_NAME, "exec", flags=flags, dont_inherit=True, optimize=2))
    data = marshal.dumps(code)
    text, table, placeholders = literal_text(data)
    decoder: dict[str, Any] = {}
    exec(_DECODE, decoder)
    if decoder["_decode"](text, table, placeholders) != data:
        raise AssertionError("render_plugin_file: CODE does not decode to the bytecode")  # pragma: no cover
    source = binascii.b2a_base64(zlib.compress(program.encode("utf-8"), 9), newline=False).decode("ascii")
    return (
        f"#!{python} -IS\n"
        "# spiderpool: the CNI IPAM plugin of spiderbgp, written by `spiderbgp install-cni`. Do not edit.\n"
        f"# SOURCE is the program: the modules {', '.join(PLUGIN_MODULES)} of cni/, whole, one after the\n"
        "# other (zlib, base64); print it with\n"
        '#   python3 -c "import ast,binascii,sys,zlib; print(zlib.decompress(binascii.a2b_base64(next(\n'
        "#   ast.literal_eval(l[9:]) for l in open(sys.argv[1]) if l.startswith('SOURCE = ')))).decode())\" FILE\n"
        "# CODE is its bytecode (marshal, as latin-1 text) for the interpreter whose bytecode magic is\n"
        "# MAGIC, run instead of compiling SOURCE on every start.\n"
        "import sys\n"
        f"MAGIC = {MAGIC_NUMBER!r}\n"
        f'CODE = """{text}"""\n'
        f"SOURCE = {source!r}\n"
        f"{_DECODE}"
        "_ext = sys.modules.get('_frozen_importlib_external')\n"
        "if getattr(_ext, 'MAGIC_NUMBER', None) == MAGIC:\n"
        "    import marshal\n"
        f"    _code = marshal.loads(_decode(CODE, {table!r}, {placeholders!r}))\n"
        "else:\n"
        "    import binascii, zlib\n"
        "    _text = zlib.decompress(binascii.a2b_base64(SOURCE)).decode('utf-8')\n"
        f"    _code = compile(_text, {PLUGIN_NAME!r}, 'exec', {flags:#x}, True)\n"
        "    del _text\n"
        "del _ext, _decode, CODE, SOURCE\n"
        "exec(_code, {'__name__': '__main__', '__file__': __file__, '__builtins__': __builtins__})\n"
    )
