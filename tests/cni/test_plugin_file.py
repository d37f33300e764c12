"""The installed plugin file: its bytecode literal, its fallback to the embedded source, its shortcuts."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import traceback
from pathlib import Path
from types import CodeType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni import agent_client, fastjson
from cni import spiderpool as sp
from spiderbgp import plugin_package as pkg

from .conftest import PYTHON


def decoder() -> Any:
    namespace: dict[str, Any] = {}
    exec(pkg._DECODE, namespace)
    return namespace["_decode"]


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=3000)
    | st.lists(st.sampled_from([0, 13, 34, 92, 255, 10, 97]), max_size=500).map(bytes)
)
def test_literal_text_round_trips_and_needs_no_escape(data: bytes) -> None:
    text, table, placeholders = pkg.literal_text(data)
    assert decoder()(text, table, placeholders) == data
    assert not any(c in text for c in '\x00\r"\\')
    # what the tokenizer reads back from the file is the same text
    assert compile(f'X = """{text}"""', "t", "exec").co_consts[0] == text


def test_literal_text_is_mostly_one_byte_per_byte_of_bytecode() -> None:
    data = pkg.render_plugin_file(PYTHON)
    code_line = next(line for line in data.splitlines() if line.startswith('CODE = """'))
    import marshal

    size = len(marshal.dumps(compile(pkg.render_source(), "x", "exec", optimize=2)))
    assert len(code_line.encode("utf-8")) < 1.15 * size


def test_compact_location_table_keeps_every_line_number() -> None:
    source = "def f(x):\n    y = [i for i in x]\n    return 1 / len(y)\n\n\nclass C:\n    def m(self):\n        return f([])\n"
    code = compile(source, "t", "exec")
    compact = pkg._compact(code)
    assert pkg._code_lines(compact) == pkg._code_lines(code)
    assert sum(len(c.co_linetable) for c in _codes(compact)) < sum(len(c.co_linetable) for c in _codes(code))
    namespace: dict[str, Any] = {}
    exec(compact, namespace)
    with pytest.raises(ZeroDivisionError) as info:
        namespace["C"]().m()
    assert [frame.lineno for frame in traceback.extract_tb(info.tb)][-2:] == [8, 3]


def _codes(code: CodeType) -> list[CodeType]:
    out = [code]
    for const in code.co_consts:
        if isinstance(const, CodeType):
            out += _codes(const)
    return out


def run_file(path: Path, env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(path)], input=stdin, env=env, capture_output=True, timeout=20, check=False)


def test_fallback_to_the_embedded_source_when_the_magic_differs(tmp_path: Path) -> None:
    text = pkg.render_plugin_file(PYTHON)
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    fast.write_text(text)
    slow.write_text(text.replace("MAGIC = b'", "MAGIC = b'\\x00", 1))
    for path in (fast, slow):
        path.chmod(0o755)
    stdin = json.dumps({"cniVersion": "0.4.0", "name": "n"}).encode()
    results = [run_file(p, {"CNI_COMMAND": "VERSION"}, stdin) for p in (fast, slow)]
    assert [r.returncode for r in results] == [0, 0]
    assert results[0].stdout == results[1].stdout
    assert json.loads(results[0].stdout)["cniVersion"] == "0.4.0"
    errors = [run_file(p, {"CNI_COMMAND": "ADD"}, b"{}") for p in (fast, slow)]
    assert [e.returncode for e in errors] == [1, 1] and errors[0].stdout == errors[1].stdout
    assert json.loads(errors[0].stdout)["code"] == 4 and b"Traceback" not in errors[1].stderr


def test_the_installed_program_is_whole_modules_without_packaging_or_agent_code() -> None:
    program = pkg.render_source()
    assert "def render_plugin_file" not in program and "def literal_text" not in program
    assert "from cni.wire import" not in program and "from __future__" not in program
    # every module of the program is in it whole, the agent's half of the schema is not
    for module in pkg.PLUGIN_MODULES:  # each one after its imports and type-only block, as it is
        text = (Path(sp.__file__).parent / f"{module}.py").read_text()
        head = [n for n in ast.parse(text).body if isinstance(n, (ast.Import, ast.ImportFrom, ast.If))
                or (isinstance(n, ast.Assign) and ast.unparse(n) == "TYPE_CHECKING = False")]  # fmt: skip
        rest = text.splitlines(keepends=True)[max(n.end_lineno or 0 for n in head) :]
        assert "".join(rest).strip() in program, module
    assert "if TYPE_CHECKING:" not in program and program.count("\nimport sys\n") == 1
    assert "class AddRequest(_Request)" in program and "def to_query" in program
    assert "def read_request" not in program and "def add_response_json" not in program
    assert "class GcResult" not in program
    assert program.rstrip().endswith(
        "exit_now(main(process_environ(), sys.stdin.buffer, sys.stdout, sys.stderr))"
    )


def write_modules(directory: Path, **modules: str) -> Path:
    package = directory / "pkg"
    package.mkdir()
    for name, text in modules.items():
        (package / f"{name}.py").write_text(text)
    return package


def test_modules_are_joined_without_their_imports_of_each_other(tmp_path: Path) -> None:
    package = write_modules(
        tmp_path,
        a="from __future__ import annotations\n\nimport sys\n\nTYPE_CHECKING = False\nif TYPE_CHECKING:\n"
        "    from typing import Any\n\nA = 1\n\n\ndef f() -> int:\n    return A\n",
        b="from __future__ import annotations\n\nimport sys\n\nfrom pkg.a import A, f\n\nTYPE_CHECKING = False\n\n"
        "B = A + f() + len(sys.argv) * 0\n",
    )
    program = pkg.render_source(package, ("a", "b"))
    assert "# --- pkg/a.py ---" in program and "# --- pkg/b.py ---" in program
    assert "from " not in program and program.count("import sys") == program.count("TYPE_CHECKING") == 1
    namespace: dict[str, Any] = {}
    exec(program, namespace)
    assert namespace["B"] == 2


@pytest.mark.parametrize(
    ("b", "message"),
    [
        ("A = 2\n", r"pkg/b.py: top-level name 'A' is also bound by pkg/a.py"),
        ("def A() -> None: ...\n", r"pkg/b.py: top-level name 'A' is also bound by pkg/a.py"),
        ("from pkg.c import C\n", r"pkg/b.py: imports pkg.c, which is not a module before it"),
        ("from pkg.a import Z\n", r"pkg/b.py: 'Z' is not a top-level name of pkg/a.py"),
        ("from pkg.a import A as Z\n", r"pkg/b.py: 'A' is not a top-level name of pkg/a.py"),
        ("import pkg.a\n", r"pkg/b.py: 'import pkg...' cannot be inlined"),
    ],
)
def test_a_program_whose_modules_would_clash_is_refused(tmp_path: Path, b: str, message: str) -> None:
    package = write_modules(
        tmp_path, a="TYPE_CHECKING = False\nA = 1\n", b="TYPE_CHECKING = False\n" + b, c="C = 1\n"
    )
    with pytest.raises(ValueError, match=message):
        pkg.render_source(package, ("a", "b"))


def test_output_is_complete_although_the_interpreter_is_not_finalized(tmp_path: Path) -> None:
    """exit_now skips finalization: a result larger than any stdio buffer still arrives whole."""
    path = tmp_path / "spiderpool"
    path.write_text(pkg.render_plugin_file(PYTHON))
    path.chmod(0o755)
    big = {"cniVersion": "1.1.0", "name": "n", "pad": "x" * 200_000}
    result = run_file(path, {"CNI_COMMAND": "VERSION"}, json.dumps(big).encode())
    assert result.returncode == 0 and json.loads(result.stdout)["cniVersion"] == "1.1.0"
    about = run_file(path, {})
    assert about.returncode == 0 and b"CNI protocol versions supported" in about.stderr


@pytest.mark.parametrize("name", ["_json", "_socket", "posix"])
def test_c_module_is_the_module_import_gives(name: str) -> None:
    module = fastjson.c_module(name)
    assert module is __import__(name) and sys.modules[name] is module


def test_c_module_of_a_missing_module_is_import_error() -> None:
    with pytest.raises(ImportError):
        fastjson.c_module("_no_such_module_here")


def test_c_module_in_a_fresh_interpreter_loads_from_lib_dynload() -> None:
    script = (
        "import sys\n"
        f"sys.path.append({str(Path(sp.__file__).parent.parent)!r})\n"
        "from cni.fastjson import c_module\n"
        "m = c_module('_json')\n"
        "import _json\n"
        "print(m is _json, getattr(m, '__file__', 'builtin'))\n"
    )
    out = subprocess.run([PYTHON, "-I", "-S", "-c", script], capture_output=True, text=True, check=True)
    same, where = out.stdout.split()
    assert same == "True" and (where == "builtin" or "lib-dynload" in where)


@pytest.mark.parametrize(
    ("data", "length"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 40),
        (b"HTTP/1.1 200 OK\r\ncontent-length:  2 \r\n\r\n{", 42),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", -1),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n", -1),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", -1),
        (b"HTTP/1.1 200 OK\r\n\r\nabc", -1),
    ],
)
def test_response_length(data: bytes, length: int) -> None:
    assert agent_client.response_length(data) == length
