"""Stack-file bytes to plain data, within bounds, or one `StackError` that names the line.

UTF-8 only; at most MAX_BYTES; no duplicate keys (YAML would silently keep the last); and
aliases, the size they expand to and the nesting depth are capped while the file is read,
so a small hostile file (an alias bomb, 5,000 nested brackets) costs milliseconds, not
seconds, gigabytes or a RecursionError. Events come from libyaml when PyYAML has it (5x
faster than PyYAML's own parser); nodes are composed here, where they can be measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from prefectstack.errors import StackError

MAX_BYTES = 256 * 1024  # a real stack file is a few KB; parsing 256 KB takes about a second
MAX_DEPTH = 50  # mappings and lists inside each other; a real stack file needs under 10
MAX_ALIASES = 100
MAX_VALUES = 100_000  # keys and values, aliases expanded; a real stack file has a few hundred
_MERGE = "tag:yaml.org,2002:merge"
_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
_FLATTEN = "a stack file needs only a few levels; flatten this value"


class _Mark(Protocol):  # yaml.Mark, or libyaml's
    line: int
    column: int


class _Refused(Exception):
    def __init__(self, problem: str, mark: _Mark | None, hint: str) -> None:
        super().__init__(problem)
        self.problem, self.mark, self.hint = problem, mark, hint


class _Bounded(Composer, SafeConstructor, Resolver):
    """PyYAML's safe composer and constructor, measuring each node as it is composed: a
    file is refused before anything is expanded, and before the composer's recursion
    could reach Python's limit."""

    def __init__(self, *, unique_keys: bool) -> None:
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.unique_keys = unique_keys
        self.depth = 0
        self.aliases = 0
        self.measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height)

    if TYPE_CHECKING:  # from the parser it is mixed with

        def peek_event(self) -> Any: ...

    # libyaml's CParser composes nodes itself, in C: use the composer above instead
    def check_node(self) -> bool:
        return Composer.check_node(self)

    def get_node(self) -> Node | None:
        return Composer.get_node(self)

    def get_single_node(self) -> Node | None:
        return Composer.get_single_node(self)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._check_alias(event)
        if self.depth >= MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark,
                           _FLATTEN)
        self.depth += 1
        try:
            node = Composer.compose_node(self, parent, index)
        finally:
            self.depth -= 1
        if node is not None:
            self._measure(node, event.start_mark)
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node = Composer.compose_mapping_node(self, anchor)
        if self.unique_keys:
            _check_unique_keys(node)
        return node

    def _check_alias(self, event: yaml.AliasEvent) -> None:
        self.aliases += 1
        if self.aliases > MAX_ALIASES:
            raise _Refused(f"more than {MAX_ALIASES} aliases (`*name`)", event.start_mark,
                           "write the values out, or use fewer anchors")
        target = self.anchors.get(event.anchor)
        if target is not None and id(target) not in self.measured:
            raise _Refused(f"alias `*{event.anchor}` is inside its own anchor: an endless value",
                           event.start_mark, "refer to an anchor only after it is complete")

    def _measure(self, node: Node, mark: _Mark) -> None:
        """Record a node's size and height; `mark` is where it (or the alias to it) is."""
        if id(node) in self.measured:  # an alias: its anchor's node, measured already
            values, height = self.measured[id(node)]
        else:
            children: list[Node] = []
            if isinstance(node, SequenceNode):
                children = list(node.value)
            elif isinstance(node, MappingNode):
                children = [n for pair in node.value for n in pair]
            sizes = [self.measured.get(id(c), (1, 1)) for c in children]
            values = 1 + sum(v for v, _ in sizes)
            height = 1 + max((h for _, h in sizes), default=0)
            self.measured[id(node)] = (values, height)
        if values > MAX_VALUES:
            if self.aliases:
                raise _Refused(f"more than {MAX_VALUES:,} keys and values through aliases",
                               mark, "write the values out")
            raise _Refused(f"more than {MAX_VALUES:,} keys and values", mark,
                           "a stack file has a few hundred; is this the right file?")
        if self.depth + height > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep through aliases", mark,
                           _FLATTEN)


class _PyLoader(Reader, Scanner, Parser, _Bounded):
    """PyYAML's own parser, when PyYAML was built without libyaml."""

    def __init__(self, text: str, *, unique_keys: bool) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        _Bounded.__init__(self, unique_keys=unique_keys)

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # `[[[[...`: refuse at the bracket, before the scanner looks ahead for a `key:`
        # among all the open brackets (quadratic in their number)
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.get_mark(),
                           _FLATTEN)
        Scanner.fetch_flow_collection_start(self, TokenClass)


def _loader_class() -> type[_Bounded]:
    try:
        from yaml._yaml import CParser
    except ImportError:
        return _PyLoader

    class _CLoader(_Bounded, CParser):  # _Bounded first: its composer, not libyaml's
        def __init__(self, text: str, *, unique_keys: bool) -> None:
            CParser.__init__(self, text)
            _Bounded.__init__(self, unique_keys=unique_keys)

    return _CLoader


_Loader: Any = _loader_class()


def _check_unique_keys(node: MappingNode) -> None:
    seen: dict[tuple[str, Any], _Mark] = {}
    for key, _ in node.value:
        if not isinstance(key, ScalarNode) or key.tag == _MERGE:
            continue  # keys merged in with `<<:` may be overridden: that is what merging is
        first = seen.setdefault((key.tag, key.value), key.start_mark)
        if first is not key.start_mark:
            raise _Refused(
                f"duplicate key `{key.value}`", key.start_mark,
                f"`{key.value}` is also at line {first.line + 1}; keep one: YAML would "
                "silently use only the last",
            )


def _where(text: str, mark: _Mark | None) -> tuple[str, str]:
    """(` at line L, column C`, the line itself with a caret under the column)."""
    if mark is None:
        return "", ""
    lines = text.splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    start = max(0, mark.column - 60)
    snippet = line[start: start + 100]
    caret = " " * (mark.column - start) + "^"
    shown = f"\n    {snippet}\n    {caret}" if snippet.strip() else ""
    return f" at line {mark.line + 1}, column {mark.column + 1}", shown


def _yaml_problem(text: str, exc: yaml.YAMLError) -> str:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f": {exc}"
    context = exc.context or ""
    if exc.context_mark is not None and exc.context_mark is not exc.problem_mark:
        context += f" at line {exc.context_mark.line + 1}"
    problem = exc.problem or "invalid"
    where, snippet = _where(text, exc.problem_mark)
    return f"{where}: {problem}" + (f" ({context})" if context else "") + snippet


def load_yaml(text: str, source: str, *, unique_keys: bool = True) -> Any:
    """Parse a stack file's text; `unique_keys=False` tolerates duplicate keys."""
    if len(text) > MAX_BYTES or len(text.encode()) > MAX_BYTES:
        raise _too_big(source)
    loader = _Loader(text, unique_keys=unique_keys)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        where, snippet = _where(text, exc.mark)
        raise StackError(f"{source}: {exc.problem}{where}{snippet}", hint=exc.hint,
                         exit_code=2) from None
    except yaml.YAMLError as exc:
        raise StackError(f"{source}: not valid YAML{_yaml_problem(text, exc)}",
                         exit_code=2) from None
    finally:
        loader.dispose()


def _too_big(source: str) -> StackError:
    return StackError(f"{source}: larger than {MAX_BYTES // 1024} KB; a stack file is a few KB",
                      hint="is this the right file?", exit_code=2)


def read_text(file: Path) -> str:
    """A stack file's text: at most MAX_BYTES (read no further), UTF-8 (a BOM is allowed)."""
    try:
        with file.open("rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise StackError(f"stack file not found: {file}", exit_code=2) from None
    except OSError as exc:
        raise StackError(f"cannot read stack file {file}: {exc.strerror or exc}",
                         exit_code=2) from None
    if len(data) > MAX_BYTES:
        raise _too_big(str(file))
    return decode(data, str(file))


def decode(data: bytes, source: str) -> str:
    """UTF-8 text, or a `StackError` that names the file and says to save it as UTF-8."""
    save = "save it as UTF-8"
    if data.startswith(_UTF16_32_BOMS):
        raise StackError(f"{source}: the file is UTF-16 or UTF-32 text, not UTF-8",
                         hint=save, exit_code=2)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise StackError(
            f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line})",
            hint=f"{save}, e.g. `iconv -f LATIN1 -t UTF-8`", exit_code=2,
        ) from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise StackError(f"{source}: NUL bytes at line {line}: UTF-16 text without a "
                         "byte-order mark, or not text at all", hint=save, exit_code=2)
    return text
