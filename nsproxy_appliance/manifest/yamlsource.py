"""YAML text → plain data plus the position of every node, by JSON path.

PyYAML silently keeps the last of two equal keys; we compose the node graph first, report
duplicates with both positions, then construct the data with the safe constructor (libyaml when
available: manifests with thousands of tenants load fast).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .problems import JsonPath, Problem

try:
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # PyYAML built without libyaml
    _Loader = yaml.SafeLoader

MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_NODES = 1_000_000  # alias bombs ("billion laughs") expand far beyond any real manifest


@dataclass
class Source:
    """The parsed document and where each value (and each mapping key) sits in the text."""

    data: Any
    values: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: JsonPath, *, key: bool = False) -> tuple[int, int]:
        """Line and column (1-based) of the node at `path`, or of its nearest ancestor."""
        path = tuple(path)
        if key and path in self.keys:
            return self.keys[path]
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (1, 1))


class YamlError(Exception):
    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(p.message for p in problems))
        self.problems = problems


def load(text: str) -> tuple[Source, list[Problem]]:
    """Parse `text`; returns the source and the duplicate-key problems (the data is still usable).

    Raises YamlError when the text is not YAML at all (one error, with PyYAML's position).
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        duplicates = _find_duplicates(root) if root is not None else []
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as e:
        raise YamlError([_syntax_problem(e)]) from None
    except yaml.YAMLError as e:  # ReaderError: a character YAML does not allow
        raise YamlError([_reader_problem(e, text)]) from None
    finally:
        loader.dispose()
    source = Source(data=data)
    if root is not None:
        try:
            _record_positions(root, (), source, _KeyConstructor(), set(), [0])
        except _TooDeep as e:
            raise YamlError([Problem(e.line, e.column, e.path, e.message)]) from None
    else:
        source.values[()] = (1, 1)
    return source, duplicates


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _key_repr(node: yaml.Node) -> Any:
    return (node.tag, node.value) if isinstance(node, yaml.ScalarNode) else None


def _find_duplicates(root: yaml.Node) -> list[Problem]:
    """Equal scalar keys in one mapping (merge keys '<<' are allowed to be overridden)."""
    problems: list[Problem] = []
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, JsonPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == MERGE_TAG:
                    stack.append((value_node, path))
                    continue
                key = _key_repr(key_node)
                child = (*path, key_node.value) if isinstance(key_node, yaml.ScalarNode) else path
                if key is not None and key in first:
                    line, column = _mark(key_node)
                    problems.append(
                        Problem(
                            line,
                            column,
                            child,
                            f"duplicate key {key_node.value!r} (first at line {_mark(first[key])[0]}); "
                            "YAML would silently keep only the last one",
                        )
                    )
                elif key is not None:
                    first[key] = key_node
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
    return problems


class _TooDeep(Exception):
    def __init__(self, line: int, column: int, path: JsonPath, message: str):
        super().__init__(message)
        self.line, self.column, self.path, self.message = line, column, path, message


def _record_positions(
    node: yaml.Node, path: JsonPath, source: Source, keys: _KeyConstructor, active: set[int], count: list[int]
) -> None:
    """Walk the (merge-flattened) node graph alongside the data and remember each node's position."""
    count[0] += 1
    if count[0] > MAX_NODES:
        raise _TooDeep(*_mark(node), path, f"the document expands to more than {MAX_NODES} nodes (aliases?)")
    if id(node) in active:
        raise _TooDeep(*_mark(node), path, "recursive alias: a node contains itself")
    source.values.setdefault(path, _mark(node))
    if isinstance(node, yaml.MappingNode):
        active.add(id(node))
        for key_node, value_node in node.value:
            key = keys.construct(key_node)
            child = (*path, key)
            # After merge flattening, later pairs win, as in the constructed dict.
            source.keys[child] = _mark(key_node)
            source.values[child] = _mark(value_node)
            _record_positions(value_node, child, source, keys, active, count)
        active.discard(id(node))
    elif isinstance(node, yaml.SequenceNode):
        active.add(id(node))
        for i, item in enumerate(node.value):
            _record_positions(item, (*path, i), source, keys, active, count)
        active.discard(id(node))


class _KeyConstructor:
    """Builds mapping keys exactly as the constructor did, so paths match the data's keys."""

    def __init__(self) -> None:
        self._loader = yaml.SafeLoader("")

    def construct(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return f"<{node.id} key>"
        try:
            key = self._loader.construct_object(node)
        except yaml.YAMLError:
            key = node.value
        finally:
            self._loader.constructed_objects.clear()
        return key if isinstance(key, str | int | float | bool) or key is None else str(key)


def _syntax_problem(e: yaml.MarkedYAMLError) -> Problem:
    mark = e.problem_mark or e.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = e.problem or "invalid YAML"
    context = ""
    if e.context:
        context = f" ({e.context}"
        if e.context_mark is not None and e.context_mark is not mark:
            context += f" at line {e.context_mark.line + 1}, column {e.context_mark.column + 1}"
        context += ")"
    return Problem(line, column, (), f"YAML syntax error: {problem}{context}")


_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _reader_problem(e: yaml.YAMLError, text: str) -> Problem:
    # libyaml reports byte offsets; find the offending character ourselves (same rule as PyYAML).
    found = _NON_PRINTABLE.search(text)
    position = found.start() if found else getattr(e, "position", 0) or 0
    before = text[:position]
    line = before.count("\n") + 1
    column = position - (before.rfind("\n") + 1) + 1
    what = f"the character U+{ord(found.group()):04X}" if found else "a character"
    return Problem(line, column, (), f"YAML syntax error: {what} is not allowed in YAML text")
