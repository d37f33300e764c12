"""YAML from people and programs we do not trust: ``yaml.safe_load`` with bounds on what a small file
may expand to.

PyYAML builds an alias as a second reference to the anchored object, so a 400-byte "billion laughs"
file costs nothing to parse and everything to copy, serialize or store afterwards; and its composer
recurses once per nesting level, so 100,000 ``[`` end in RecursionError.  :func:`load_all` refuses
both while composing, before anything is built:

- nesting deeper than ``MAX_DEPTH`` collections (Kubernetes objects nest a few dozen levels at most);
- aliases that would add more than ``MAX_ALIAS_NODES`` nodes to the documents once expanded (as
  go-yaml, which kubectl uses, bounds alias expansion): anchors that reuse a few small maps still work.

Both raise :class:`YamlLimit`, a ``yaml.YAMLError`` whose ``problem`` and ``problem_mark`` name the
limit and the line, so callers that already turn YAML errors into one line need nothing new.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

__all__ = ["MAX_ALIAS_NODES", "MAX_DEPTH", "YamlLimit", "load", "load_all"]

MAX_DEPTH = 100
MAX_ALIAS_NODES = 10_000


class YamlLimit(yaml.YAMLError):
    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        self.problem = problem
        self.problem_mark = mark
        super().__init__(problem)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nesting depth and the nodes aliases add, per document."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._alias_nodes = 0
        self._sizes: dict[int, int] = {}

    def compose_document(self) -> Node | None:
        self._alias_nodes = 0
        self._sizes = {}
        node: Node | None = super().compose_document()
        return node

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            node: Node | None = super().compose_node(parent, index)
            if node is not None:
                self._alias_nodes += self._expanded(node)
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise YamlLimit(
                        f"aliases expand to more than {MAX_ALIAS_NODES} nodes (a YAML alias bomb?)", mark
                    )
            return node
        collection = self.check_event(yaml.SequenceStartEvent) or self.check_event(yaml.MappingStartEvent)
        if collection:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise YamlLimit(f"nested deeper than {MAX_DEPTH} levels", mark)
        try:
            return super().compose_node(parent, index)
        finally:
            if collection:
                self._depth -= 1

    def _expanded(self, node: Node) -> int:
        """How many nodes ``node`` stands for once every alias inside it is expanded (memoized by
        identity, so an alias of an alias of ... costs one visit per distinct node)."""
        key = id(node)
        cached = self._sizes.get(key)
        if cached is not None:
            return cached
        size = 1
        if isinstance(node, SequenceNode):
            size += sum(self._expanded(child) for child in node.value)
        elif isinstance(node, MappingNode):
            size += sum(self._expanded(k) + self._expanded(v) for k, v in node.value)
        self._sizes[key] = size
        return size


def load_all(text: str) -> list[Any]:
    """Every document of ``text``; raises ``yaml.YAMLError`` (a :class:`YamlLimit` past a bound)."""
    loader = _BoundedLoader(text)
    try:
        docs: list[Any] = []
        while loader.check_data():  # type: ignore[no-untyped-call]
            docs.append(loader.get_data())
        return docs
    finally:
        loader.dispose()


def load(text: str) -> Any:
    """The single document of ``text`` (None if empty), as ``yaml.safe_load``, with the same bounds."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
