"""The installed plugin file: its bytecode literal, its fallback to the embedded source, its shortcuts."""

from __future__ import annotations

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

from cni import spiderpool as sp

from .conftest import PYTHON


def decoder() -> Any:
    namespace: dict[str, Any] = {}
    exec(sp._DECODE, namespace)
    return namespace["_decode"]


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=3000)
    | st.lists(st.sampled_from([0, 13, 34, 92, 255, 10, 97]), max_size=500).map(bytes)
)
def test_literal_text_round_trips_and_needs_no_escape(data: bytes) -> None:
    text, table, placeholders = sp.literal_text(data)
    assert decoder()(text, table, placeholders) == data
    assert not any(c in text for c in '\x00\r"\\')
    # what the tokenizer reads back from the file is the same text
    assert compile(f'X = """{text}"""', "t", "exec").co_consts[0] == text


def test_literal_text_is_mostly_one_byte_per_byte_of_bytecode() -> None:
    data = sp.render_plugin_file(PYTHON)
    code_line = next(line for line in data.splitlines() if line.startswith('CODE = """'))
    import marshal

    size = len(marshal.dumps(compile(sp.render_source(), "x", "exec", optimize=2)))
    assert len(code_line.encode("utf-8")) < 1.15 * size


def test_compact_location_table_keeps_every_line_number() -> None:
    source = "def f(x):\n    y = [i for i in x]\n    return 1 / len(y)\n\n\nclass C:\n    def m(self):\n        return f([])\n"
    code = compile(source, "t", "exec")
    compact = sp._compact(code)
    assert sp._code_lines(compact) == sp._code_lines(code)
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
    text = sp.render_plugin_file(PYTHON)
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


def test_the_installed_program_has_no_packaging_code() -> None:
    program = sp.render_source()
    assert "def render_plugin_file" not in program and "def literal_text" not in program
    assert "from cni.wire import" not in program and "class AddRequest(_Record)" in program
    # the agent-side blocks of cni/wire.py are left out; what the plugin calls stays
    assert "class GcResult" not in program and "def from_query" not in program and "__all__" not in program
    assert "def to_query" in program and "class ErrorResponse(_Record)" in program
    assert program.rstrip().endswith(
        "exit_now(main(process_environ(), sys.stdin.buffer, sys.stdout, sys.stderr))"
    )


def test_an_agent_side_block_without_its_end_is_refused() -> None:
    with pytest.raises(ValueError, match="has no end"):
        sp._without_agent_side("x = 1\n# --- agent side (left out of the plugin file) ---\ny = 2\n")
    assert (
        sp._without_agent_side("a\n    # --- agent side\n    b\n    # --- end agent side ---\nc\n")
        == "a\nc\n"
    )


def test_output_is_complete_although_the_interpreter_is_not_finalized(tmp_path: Path) -> None:
    """exit_now skips finalization: a result larger than any stdio buffer still arrives whole."""
    path = tmp_path / "spiderpool"
    path.write_text(sp.render_plugin_file(PYTHON))
    path.chmod(0o755)
    big = {"cniVersion": "1.1.0", "name": "n", "pad": "x" * 200_000}
    result = run_file(path, {"CNI_COMMAND": "VERSION"}, json.dumps(big).encode())
    assert result.returncode == 0 and json.loads(result.stdout)["cniVersion"] == "1.1.0"
    about = run_file(path, {})
    assert about.returncode == 0 and b"CNI protocol versions supported" in about.stderr


@pytest.mark.parametrize("name", ["_json", "_socket", "posix"])
def test_c_module_is_the_module_import_gives(name: str) -> None:
    module = sp.c_module(name)
    assert module is __import__(name) and sys.modules[name] is module


def test_c_module_of_a_missing_module_is_import_error() -> None:
    with pytest.raises(ImportError):
        sp.c_module("_no_such_module_here")


def test_c_module_in_a_fresh_interpreter_loads_from_lib_dynload() -> None:
    script = (
        "import sys\n"
        f"sys.path.append({str(Path(sp.__file__).parent.parent)!r})\n"
        "from cni.spiderpool import c_module\n"
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
    assert sp.response_length(data) == length
