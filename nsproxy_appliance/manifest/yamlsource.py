"""YAML text → plain data plus the position of every node, by JSON path.

PyYAML silently keeps the last of two equal keys; we compose the node graph first (composer.py:
iterative and bounded, over libyaml's event stream), report duplicates with both positions, then
construct the data with the safe constructor (constructor.py: every failure says where). Nothing
here recurses per nesting level, and every size is bounded (bounds.py): any input gives data or
YamlError, never a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from .bounds import MAX_DEPTH, MAX_NODES, LimitExceeded
from .composer import compose
from .constructor import MERGE_TAG, GuardedConstructor, ScalarError
from .problems import JsonPath, Problem

__all__ = ["MAX_NODES", "MERGE_TAG", "Source", "YamlError", "load"]

try:
    from yaml.cyaml import CParser as _Parser  # type: ignore[attr-defined]  # libyaml: thousands of tenants load fast

    class _Loader(_Parser, GuardedConstructor, Resolver):
        def __init__(self, text: str):
            _Parser.__init__(self, text)
            GuardedConstructor.__init__(self)
            Resolver.__init__(self)

except ImportError:  # PyYAML built without libyaml

    class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, GuardedConstructor, Resolver):  # type: ignore[no-redef]  # the pure-Python twin of the CLoader above
        def __init__(self, text: str):
            yaml.reader.Reader.__init__(self, text)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            GuardedConstructor.__init__(self)
            Resolver.__init__(self)


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

    Raises YamlError when the text is not YAML at all, or not one nsproxy can read (one error).
    """
    try:
        loader = _Loader(text)
    except UnicodeEncodeError as e:  # a lone surrogate: only from a Python caller, never from a file
        line, column = _line_column(text, e.start)
        raise YamlError([Problem(line, column, (), f"the character U+{ord(text[e.start]):04X} is not text")]) from None
    except yaml.YAMLError as e:  # the pure-Python reader checks every character at once
        raise YamlError([_reader_problem(e, text)]) from None
    root: Node | None = None
    try:
        root = compose(loader)
        duplicates = _find_duplicates(root) if root is not None else []
        data = loader.construct_document(root) if root is not None else None
    except LimitExceeded as e:
        raise YamlError([Problem(e.line, e.column, (), e.message)]) from None
    except ScalarError as e:
        path = _path_of(root, e.node) if root is not None else ()
        raise YamlError([Problem(*_mark(e.node), path, e.message)]) from None
    except yaml.MarkedYAMLError as e:
        raise YamlError([_syntax_problem(e)]) from None
    except yaml.YAMLError as e:  # ReaderError: a character YAML does not allow
        raise YamlError([_reader_problem(e, text)]) from None
    finally:
        loader.dispose()
    source = Source(data=data)
    if root is not None:
        try:
            _record_positions(root, source, _KeyConstructor())
        except _Refused as e:
            raise YamlError([Problem(e.line, e.column, e.path, e.message)]) from None
    else:
        source.values[()] = (1, 1)
    return source, duplicates


def _mark(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _key_repr(node: Node) -> Any:
    return (node.tag, node.value) if isinstance(node, ScalarNode) else None


def _find_duplicates(root: Node) -> list[Problem]:
    """Equal scalar keys in one mapping (merge keys '<<' are allowed to be overridden)."""
    problems: list[Problem] = []
    seen_nodes: set[int] = set()
    stack: list[tuple[Node, JsonPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[Any, Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == MERGE_TAG:
                    stack.append((value_node, path))
                    continue
                key = _key_repr(key_node)
                child = (*path, key_node.value) if isinstance(key_node, ScalarNode) else path
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
        elif isinstance(node, SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
    return problems


def _path_of(root: Node, target: Node) -> JsonPath:
    """The JSON path of `target` (keys as written), for errors raised before the data exists."""
    seen: set[int] = set()
    stack: list[tuple[Node, JsonPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, ScalarNode) else _collection_key(key_node)
                stack.append((key_node, path))
                stack.append((value_node, (*path, key)))
        elif isinstance(node, SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
    return ()


def _collection_key(node: Node) -> str:
    return "<mapping key>" if isinstance(node, MappingNode) else "<sequence key>"


class _Refused(Exception):
    def __init__(self, node: Node, path: JsonPath, message: str):
        super().__init__(message)
        (self.line, self.column), self.path, self.message = _mark(node), path, message


_LEAVE = object()  # stack marker: the walk leaves the collection whose id follows


def _record_positions(root: Node, source: Source, keys: _KeyConstructor) -> None:
    """Walk the (merge-flattened) node graph alongside the data and remember each node's position.

    Iterative, depth-first in document order; later pairs win, as in the constructed dict (after
    merge flattening a key can appear twice). Aliases can make the graph deeper and larger than the
    text: both are bounded, and a collection that contains itself is refused.
    """
    values, key_marks = source.values, source.keys
    values[()] = _mark(root)
    count = 1
    active: set[int] = set()  # the collections on the path being walked
    stack: list[tuple[Any, Any]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if node is _LEAVE:
            active.discard(path)
            continue
        if node.__class__ is ScalarNode:
            continue
        if id(node) in active:
            raise _Refused(node, path, "recursive alias: a node contains itself")
        if len(path) >= MAX_DEPTH:
            raise _Refused(node, path, f"the document nests deeper than {MAX_DEPTH} levels (through aliases)")
        active.add(id(node))
        stack.append((_LEAVE, id(node)))
        children: list[tuple[Node, JsonPath]] = []
        if node.__class__ is MappingNode:
            for key_node, value_node in node.value:
                child = (*path, keys.construct(key_node))
                key_marks[child] = _mark(key_node)
                values[child] = _mark(value_node)
                children.append((value_node, child))
        else:
            for i, item in enumerate(node.value):
                child = (*path, i)
                values[child] = _mark(item)
                children.append((item, child))
        count += len(children)
        if count > MAX_NODES:
            raise _Refused(node, path, f"the document expands to more than {MAX_NODES} nodes (aliases?)")
        children.reverse()
        stack.extend(children)


class _KeyConstructor:
    """Builds mapping keys exactly as the constructor did, so paths match the data's keys."""

    def __init__(self) -> None:
        self._constructor = GuardedConstructor()
        self._built: dict[tuple[str, str], Any] = {}  # most keys repeat: name, listen, ...

    def construct(self, node: Node) -> Any:
        if node.__class__ is not ScalarNode:
            return _collection_key(node)
        written = (node.tag, node.value)
        if written in self._built:
            return self._built[written]
        try:
            key = self._constructor.construct_object(node)
        except (yaml.YAMLError, ScalarError):
            key = node.value
        finally:
            self._constructor.constructed_objects.clear()
            self._constructor.recursive_objects.clear()
        self._built[written] = key  # hashable: the constructor refused any other key
        return key


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
    kind = (
        "YAML error"
        if isinstance(e, yaml.composer.ComposerError | yaml.constructor.ConstructorError)
        else "YAML syntax error"
    )
    return Problem(line, column, (), f"{kind}: {problem}{context}")


_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _reader_problem(e: yaml.YAMLError, text: str) -> Problem:
    # libyaml reports byte offsets; find the offending character ourselves (same rule as PyYAML).
    found = _NON_PRINTABLE.search(text)
    line, column = _line_column(text, found.start() if found else getattr(e, "position", 0) or 0)
    what = f"the character U+{ord(found.group()):04X}" if found else "a character"
    return Problem(line, column, (), f"YAML syntax error: {what} is not allowed in YAML text")


def _line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of the character at `position`."""
    line_start = text.rfind("\n", 0, position) + 1
    return text.count("\n", 0, position) + 1, position - line_start + 1
