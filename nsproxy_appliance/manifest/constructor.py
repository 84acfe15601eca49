"""Nodes → plain data with PyYAML's safe constructor, made to fail only with errors that say where.

PyYAML's safe constructors let Python errors escape for some scalars: `!!int abc` (ValueError),
an empty `!!int` (IndexError), `!!bool maybe` (KeyError), `!!timestamp 2001-13-45` (ValueError,
also for a plain 2001-13-45, which YAML 1.1 reads as a date), integers of more than 4,300 digits
(Python's int/str limit). Here each scalar constructor turns such a failure into ScalarError, naming
the node. Merge keys (`<<`) are flattened recursively by PyYAML, without bound on depth or size: a
chain of merges reaches RecursionError and ten aliases merged ten times over exhaust memory; here
both are bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, SequenceNode

from .bounds import MAX_DEPTH, MAX_INT_CHARS, MAX_NODES, LimitExceeded

MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"
_STR_TAG = "tag:yaml.org,2002:str"

# What each scalar tag is, in error messages.
_SCALAR_TAGS = {
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:bool": "boolean (true or false)",
    "tag:yaml.org,2002:int": "integer",
    "tag:yaml.org,2002:float": "number",
    "tag:yaml.org,2002:binary": "base64 binary value",
    "tag:yaml.org,2002:timestamp": "date or timestamp (YYYY-MM-DD[ HH:MM:SS])",
}


class ScalarError(Exception):
    """A scalar cannot be read as its tag says; `node` is where it is written."""

    def __init__(self, node: Node, message: str):
        super().__init__(message)
        self.node, self.message = node, message


def _guarded(tag: str, construct: Callable[[Any, Node], Any]) -> Callable[[Any, Node], Any]:
    what = _SCALAR_TAGS[tag]
    short = tag.rsplit(":", 1)[-1]

    def guarded(loader: Any, node: Node) -> Any:
        if short == "int" and isinstance(node.value, str) and len(node.value) > MAX_INT_CHARS:
            raise ScalarError(node, f"an integer of {len(node.value)} characters is too long (at most {MAX_INT_CHARS})")
        try:
            return construct(loader, node)
        except yaml.YAMLError:
            raise
        except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as e:
            value = node.value if isinstance(node.value, str) else ""
            reason = f": {e}" if short == "timestamp" and isinstance(e, ValueError) else ""  # e.g. month out of range
            shown = repr(value) if len(value) <= 40 else repr(value[:40]) + "…"
            raise ScalarError(
                node, f"{shown} is not a valid {what}{reason} (read as !!{short}); quote it if it is a string"
            ) from None

    return guarded


class GuardedConstructor(SafeConstructor):
    """SafeConstructor whose errors are all YAMLError, ScalarError or LimitExceeded."""

    yaml_constructors = dict(SafeConstructor.yaml_constructors)
    for _tag in _SCALAR_TAGS:
        yaml_constructors[_tag] = _guarded(_tag, SafeConstructor.yaml_constructors[_tag])
    del _tag

    def __init__(self) -> None:
        super().__init__()
        self._merged = 0  # mapping entries copied by merge keys, over the whole document

    def flatten_mapping(self, node: MappingNode, depth: int = 0) -> None:
        """PyYAML's merge-key flattening (same result), bounded in depth and in size."""
        if depth > MAX_DEPTH:
            raise _limit(node, f"merge keys (<<) nest more than {MAX_DEPTH} levels deep")
        merge: list[tuple[Node, Node]] = []
        index = 0
        while index < len(node.value):
            key_node, value_node = node.value[index]
            if key_node.tag == MERGE_TAG:
                del node.value[index]
                if isinstance(value_node, MappingNode):
                    sources = [value_node]
                elif isinstance(value_node, SequenceNode):
                    sources = []
                    for subnode in value_node.value:
                        if not isinstance(subnode, MappingNode):
                            raise ConstructorError(
                                "while constructing a mapping",
                                node.start_mark,
                                f"expected a mapping for merging, but found {_kind(subnode)}",
                                subnode.start_mark,
                            )
                        sources.append(subnode)
                    sources.reverse()  # earlier mappings in the list win
                else:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"expected a mapping or list of mappings for merging, but found {_kind(value_node)}",
                        value_node.start_mark,
                    )
                for source in sources:
                    self.flatten_mapping(source, depth + 1)
                    self._merged += len(source.value)
                    if self._merged > MAX_NODES:
                        raise _limit(node, f"merge keys (<<) expand to more than {MAX_NODES} entries")
                    merge.extend(source.value)
            elif key_node.tag == _VALUE_TAG:
                key_node.tag = _STR_TAG
                index += 1
            else:
                index += 1
        if merge:
            node.value = merge + node.value


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "mapping"
    return "sequence" if isinstance(node, SequenceNode) else "scalar"


def _limit(node: Node, message: str) -> LimitExceeded:
    return LimitExceeded(node.start_mark.line + 1, node.start_mark.column + 1, message)
