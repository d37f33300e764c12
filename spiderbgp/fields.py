"""Reading typed values out of parsed YAML/JSON, with one-line errors that name the field path."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["MAX_SECONDS", "ConfigError", "Fields"]

MAX_SECONDS = 7 * 24 * 3600.0  # the longest interval or duration a config field takes (a week)

T = TypeVar("T")


class ConfigError(Exception):
    """``<source>: <field.path>: <reason>``: the one line a user sees."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        self.source, self.field, self.reason = source, field, reason
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {reason}" if field else f"{where}{reason}")


class Fields:
    """A mapping being read, with its path for error messages; unknown keys are reported by ``done()``."""

    def __init__(self, raw: object, *, source: str, path: str = "") -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(source, path or "(top level)", f"must be a mapping, not {type(raw).__name__}")
        self._raw: Mapping[str, Any] = raw
        self._source = source
        self._path = path
        self._seen: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self._source, self._name(key), reason)

    def _get(self, key: str) -> object:
        self._seen.add(key)
        return self._raw.get(key)

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(key)
        if value is None:
            if required or default is None:
                raise self.error(key, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, not {value!r}")
        if any(ord(c) < 32 for c in value):
            raise self.error(key, "must not contain control characters")
        return value

    def optional_string(self, key: str) -> str | None:
        if self._get(key) is None:
            return None
        return self.string(key)

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, not {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, not {value}")
        return value

    def number(
        self, key: str, default: float, *, minimum: float = 0.0, maximum: float = MAX_SECONDS
    ) -> float:
        """A finite number in ``[minimum, maximum]`` (``.inf`` and ``.nan`` are YAML numbers too)."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {value!r}")
        if not math.isfinite(value):
            raise self.error(key, f"must be a finite number, not {value}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum:g}, not {value:g}")
        if value > maximum:
            raise self.error(key, f"must be at most {maximum:g}, not {value:g}")
        return float(value)

    def path(self, key: str, default: str | None = None) -> str | None:
        """An absolute file path (``~`` is expanded); a relative one would depend on where the agent
        was started."""
        if self._get(key) is None and default is None:
            return None
        text = self.string(key, default)
        if not os.path.isabs(os.path.expanduser(text)):
            raise self.error(key, f"must be an absolute path, not {text!r}")
        return text

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def section(self, key: str) -> Fields:
        return Fields(self._get(key), source=self._source, path=self._name(key))

    def raw(self, key: str) -> object:
        return self._get(key)

    def done(self) -> None:
        unknown = sorted(set(self._raw) - self._seen)
        if unknown:
            raise self.error(str(unknown[0]), "unknown field")
