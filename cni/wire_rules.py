"""The rules of the wire schema's values, shared by the plugin and the agent: identifiers as libcni's
skel validates them (the plugin checks its input by them, the agent every request), and the one
field reader of ``from_json`` (``_field`` with a table of what each kind of field may hold), each
failure one ValueError naming ``Record.field``.

Part of the installed plugin program (see ``cni/wire.py``): stdlib only and import-free at run time.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

# A container ID or network name longer than this is refused (runtimes use 64 hex digits; skel sets
# no bound, but the agent stores them as keys).
MAX_ID_LENGTH = 256


# --- identifiers, as libcni's skel validates them (the plugin checks its input, the agent requests) ---

_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_REST = _ID_FIRST | frozenset("_.-")


def _shown(value: str) -> str:
    """``value`` quoted for an error line, cut to 40 characters."""
    return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} characters)"


def id_problem(value: str) -> str:
    """Why ``value`` is not a container ID or network name ("" when it is): skel's
    ``^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$``, at most MAX_ID_LENGTH characters."""
    if not value:
        return "is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{_shown(value)} is longer than {MAX_ID_LENGTH} characters"
    if value[0] not in _ID_FIRST or not _ID_REST.issuperset(value):
        return (
            f"{_shown(value)} must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
        )
    return ""


def interface_name_problem(name: str) -> str:
    """Why ``name`` is not a usable interface name ("" when it is), as skel's ValidateInterfaceName:
    not empty, at most 15 bytes (IFNAMSIZ - 1), not ``.`` or ``..``, no ``/``, ``:`` or whitespace."""
    if not name:
        return "is empty"
    if len(name.encode("utf-8", "surrogatepass")) > 15:  # bytes, as the kernel (and skel's Go len) count
        return f"{_shown(name)} is longer than 15 bytes"
    if name in (".", ".."):
        return f"{name!r} is not allowed"
    for c in name:
        if c in "/:" or c.isspace() or not c.isprintable():
            return f"{name!r} contains {c!r}"
    return ""


# --- field readers: every failure is one ValueError naming Record.field --------------------------


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class _Expect:
    """What one field may hold, for ``_field``: ``problem(value)`` is "" for a good JSON value, else the
    rest of the error line after ``Record.field``; ``absent`` is the field's value when its key is
    missing or null (``_REQUIRED``: it is refused); ``final`` turns a good value into the record's."""

    __slots__ = ("absent", "final", "problem")

    def __init__(
        self, problem: Callable[[Any], str], absent: object, final: Callable[[Any], Any] | None = None
    ) -> None:
        self.problem, self.absent, self.final = problem, absent, final


_REQUIRED = object()


def _field(obj: Mapping[str, Any], key: str, where: str, expect: _Expect) -> Any:
    """The one field reader of the wire schema: ``obj[key]`` as ``expect`` says, or ValueError
    naming ``where.key``."""
    value = obj.get(key)
    if value is None:
        if expect.absent is _REQUIRED:
            raise ValueError(f"{where}.{key}: missing")
        return expect.absent
    problem = expect.problem(value)
    if problem:
        raise ValueError(f"{where}.{key}{problem}")
    return value if expect.final is None else expect.final(value)


def _not_a_string(value: Any) -> str:
    return "" if isinstance(value, str) else f": expected a string, got {_kind(value)}"


def _not_text(value: Any) -> str:
    return _not_a_string(value) or ("" if value else ": must not be empty")


def _not_an_array(value: Any) -> str:
    return "" if isinstance(value, list) else f": expected an array, got {_kind(value)}"


def _not_texts(value: Any) -> str:
    if not isinstance(value, list):
        return f": expected an array of strings, got {_kind(value)}"
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            return f"[{i}]: expected a non-empty string, got {_kind(item)}"
    return ""


def _not_a_flag(value: Any) -> str:
    return "" if isinstance(value, bool) else f": expected true or false, got {_kind(value)}"


def _not_a_code(value: Any) -> str:
    good = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return "" if good else f": expected a positive integer, got {_kind(value)}"


def _not_an_ip(value: Any) -> str:
    if not isinstance(value, str):
        return _not_a_string(value)
    return "" if _looks_like_ip(value, 6 if ":" in value else 4) else f": {value!r} is not an IP address"


# What each kind of field may hold (the records' from_json and the agent's request table read by these)
_TEXT = _Expect(_not_text, _REQUIRED)  # a non-empty string
_OPT_TEXT = _Expect(_not_a_string, "")  # a string, "" when absent
_TEXTS = _Expect(_not_texts, (), tuple)  # non-empty strings, () when absent
_ARRAY = _Expect(_not_an_array, ())  # a JSON array, () when absent
_REQUIRED_ARRAY = _Expect(_not_an_array, _REQUIRED)
_FLAG = _Expect(_not_a_flag, False)  # true or false, false when absent
_CODE = _Expect(_not_a_code, _REQUIRED)  # a CNI error code
_IP = _Expect(_not_an_ip, None)  # an IP address, None when absent


def _cidr(value: str, where: str) -> int:
    """Check ``ip/prefix`` loosely (no ipaddress import) and return the IP version it implies."""
    ip, sep, prefix = value.partition("/")
    version = 6 if ":" in ip else 4
    limit = 128 if version == 6 else 32
    if not sep or not ip or not prefix.isdigit() or int(prefix) > limit or not _looks_like_ip(ip, version):
        raise ValueError(f"{where}: {value!r} is not an address in CIDR notation (ip/prefix)")
    return version


def _looks_like_ip(ip: str, version: int) -> bool:
    if version == 4:
        parts = ip.split(".")
        return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts)
    return all(c in "0123456789abcdefABCDEF:." for c in ip) and ip.count("::") <= 1
