"""YAML for trainer configs and sweep specs: `yaml.safe_load` plus the refusals it lacks.

- A duplicate key in a mapping is an error: PyYAML keeps the last value silently, so a config with
  `learning_rate` twice trains with whichever came last.
- Alias expansion is bounded (MAX_NODES): a few hundred bytes of nested aliases ("billion laughs")
  describe ~10^9 values. PyYAML shares the nodes, so loading is cheap, but anything that walks the
  result (a repr in an error message, json.dumps, validation) expands them. Recursive aliases are refused.
- Text quoted from the document into an error message (a tag, a key) is cut to a few dozen characters.
- A UTF-8 byte-order mark at the start is accepted.

Imports only yaml: the trainer runs with torch, numpy and pyyaml.
"""

from __future__ import annotations

import reprlib
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

MAX_NODES = 100_000  # values that aliases may add; a shipped spec has none
MERGE_TAG = "tag:yaml.org,2002:merge"

def short(value: Any, limit: int = 60) -> str:
    """repr(value) cut to about `limit` characters, without walking a huge or shared structure."""
    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    return r.repr(value)


class RefusedYAML(yaml.MarkedYAMLError):
    """Well-formed YAML that a config may not contain (a duplicate key, an alias bomb)."""


class StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self._expanded = 0  # values that aliases have added so far, each counted at its full size
        self._sizes: dict[int, int] = {}
        self._open: set[str] = set()  # anchors whose node is still being composed

    # ------------------------------------------------------------ alias expansion
    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise RefusedYAML(None, None, f"recursive alias *{short(event.anchor)[1:-1]}; a config is a tree: "
                                  "write the values out", event.start_mark)
            node = super().compose_node(parent, index)
            assert node is not None
            self._count(self._size(node), event.start_mark)
            return node
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        assert node is not None
        self._open.discard(anchor)  # type: ignore[arg-type]
        # a value written out is bounded by the text's size: only what aliases add is counted (a long spec,
        # 9,000 include points, is no bomb)
        return node

    def _size(self, node: Node) -> int:
        if id(node) not in self._sizes:
            if isinstance(node, ScalarNode):
                size = 1
            elif isinstance(node, MappingNode):
                size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            else:
                size = 1 + sum(self._size(v) for v in node.value)
            self._sizes[id(node)] = min(size, MAX_NODES + 1)
        return self._sizes[id(node)]

    def _count(self, n: int, mark: Any) -> None:
        self._expanded += n
        if self._expanded > MAX_NODES:
            raise RefusedYAML(None, None, f"aliases expand to more than {MAX_NODES:,} values (an alias bomb?); "
                              "write the values out", mark)

    # ------------------------------------------------------------ duplicate keys, bounded messages
    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:  # `<<: *base` keys are meant to be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # unhashable: the base class reports it
                if first is not key_node.start_mark:
                    raise RefusedYAML(None, None, f"duplicate key {short(key)} (first on line {first.line + 1}); "
                                      "keep one of them", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]

    def construct_undefined(self, node: Node) -> Any:
        raise yaml.constructor.ConstructorError(None, None, f"could not determine a constructor for the tag "
                                                f"{short(node.tag)}", node.start_mark)


StrictLoader.add_constructor(None, StrictLoader.construct_undefined)  # type: ignore[arg-type]  # None: any unknown tag


def load(text: str) -> Any:
    """One YAML document -> Python data; raises yaml.YAMLError (RefusedYAML for the refusals above)."""
    loader = StrictLoader(text.removeprefix("\ufeff"))
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


def problem(e: yaml.YAMLError, limit: int = 200) -> str:
    """The first line of a YAML error, bounded in length."""
    text = (str(e).splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."
