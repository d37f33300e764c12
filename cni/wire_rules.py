"""The rules of the wire schema's values, shared by the plugin and the agent: identifiers as libcni's
skel validates them (the plugin checks its input by them, the agent every request), and the field
readers of ``from_json``, each failure one ValueError naming ``Record.field``.

Part of the installed plugin program (see ``cni/wire.py``): stdlib only and import-free at run time.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
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


def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = True, empty: bool = False) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise ValueError(f"{where}.{key}: missing")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: expected a string, got {_kind(value)}")
    if not value and required and not empty:
        raise ValueError(f"{where}.{key}: must not be empty")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: expected a string, got {_kind(value)}")
    return value


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{where}.{key}: expected an array of strings, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ValueError(f"{where}.{key}[{i}]: expected a non-empty string, got {_kind(item)}")
    return tuple(value)


def _list(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> list[Any]:
    value = obj.get(key)
    if value is None:
        if required:
            raise ValueError(f"{where}.{key}: missing")
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}.{key}: expected an array, got {_kind(value)}")
    return value


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


def _ip(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = _opt_str(obj, key, where)
    if value is not None and not _looks_like_ip(value, 6 if ":" in value else 4):
        raise ValueError(f"{where}.{key}: {value!r} is not an IP address")
    return value


def _code(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}.{key}: expected a positive integer, got {_kind(value)}")
    return value
