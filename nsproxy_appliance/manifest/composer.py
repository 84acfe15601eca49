"""YAML events → the node graph of the single document, iteratively and within bounds.

libyaml's composer (CParser.get_single_node) recurses in C once per nesting level, so about 100,000
'[' kill the process with SIGSEGV, and PyYAML's Python composer raises RecursionError near 1,000.
Here the parser's event stream (iterative in libyaml too) is assembled into the same nodes with an
explicit stack, refusing nesting deeper than MAX_DEPTH and more than MAX_NODES nodes as they are
read. It is also faster than the C composer, which resolves plain scalars in Python anyway.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .bounds import MAX_DEPTH, MAX_NODES, LimitExceeded

_SCALAR = yaml.ScalarEvent
_SEQUENCE_START = yaml.SequenceStartEvent
_MAPPING_START = yaml.MappingStartEvent
_COLLECTION_END = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
_ALIAS = yaml.AliasEvent
_DOCUMENT_START = yaml.DocumentStartEvent


def compose(loader: Any, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Node | None:
    """The root node of the stream's only document (None for an empty stream).

    `loader` is a PyYAML loader (a parser with get_event, and a resolver). Raises the errors
    PyYAML's composer raises (yaml.MarkedYAMLError) and LimitExceeded.
    """
    resolve = loader.resolve
    resolved: dict[tuple[str, Any], str] = {}  # plain scalars repeat (keys, addresses): resolve each once
    anchors: dict[str, Node] = {}
    # One entry per open collection: [node, key waiting for its value (mappings only)].
    stack: list[list[Any]] = []
    root: Node | None = None
    documents = 0
    count = 0
    for event in iter(loader.get_event, None):
        kind = event.__class__
        if kind is _SCALAR:
            tag = event.tag
            if tag is None or tag == "!":
                written = (event.value, event.implicit)
                tag = resolved.get(written)
                if tag is None:
                    tag = resolved[written] = resolve(ScalarNode, event.value, event.implicit)
            node: Node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        elif kind is _MAPPING_START or kind is _SEQUENCE_START:
            if len(stack) >= max_depth:
                raise _limit(event, f"the document nests deeper than {max_depth} levels")
            node_class = MappingNode if kind is _MAPPING_START else SequenceNode
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolve(node_class, None, event.implicit)
            node = node_class(tag, [], event.start_mark, None, event.flow_style)
        elif kind in _COLLECTION_END:
            node = stack.pop()[0]
            node.end_mark = event.end_mark
            if stack:
                _attach(node, stack[-1])
            else:
                root = node
            continue
        elif kind is _ALIAS:
            if event.anchor not in anchors:
                raise ComposerError(None, None, f"found undefined alias *{event.anchor}", event.start_mark)
            node = anchors[event.anchor]
        elif kind is _DOCUMENT_START:
            documents += 1
            if documents > 1:
                first = root.start_mark if root is not None else None
                raise ComposerError(
                    "expected a single document in the stream", first, "but found another document", event.start_mark
                )
            continue
        else:  # stream start/end, document end
            continue

        count += 1
        if count > max_nodes:
            raise _limit(event, f"the document has more than {max_nodes} nodes")
        anchor = event.anchor
        if anchor is not None and kind is not _ALIAS:
            if anchor in anchors:
                first_mark = anchors[anchor].start_mark
                raise ComposerError(
                    None,
                    None,
                    f"found duplicate anchor &{anchor} (first at line {first_mark.line + 1}, "
                    f"column {first_mark.column + 1})",
                    event.start_mark,
                )
            anchors[anchor] = node
        if kind is _MAPPING_START or kind is _SEQUENCE_START:
            stack.append([node, None])
        elif stack:
            _attach(node, stack[-1])
        else:
            root = node
    return root


def _attach(node: Node, top: list[Any]) -> None:
    """Add a finished node to the open collection `top` (as a key or as a value)."""
    parent = top[0]
    if parent.__class__ is SequenceNode:
        parent.value.append(node)
    elif top[1] is None:
        top[1] = node
    else:
        parent.value.append((top[1], node))
        top[1] = None


def _limit(event: Any, message: str) -> LimitExceeded:
    return LimitExceeded(event.start_mark.line + 1, event.start_mark.column + 1, message)
