"""A small HTML tree for the book checks (stdlib ``html.parser``): parse a built page, walk it in reading order
(code cells' source left out) and read a table's header and rows. Used by :mod:`stsynth_lib.book.screens`."""

from __future__ import annotations

import re
from html.parser import HTMLParser


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_NO_TEXT = {"style", "script", "template"}


class _Node:
    __slots__ = ("tag", "attrs", "children", "parent")

    def __init__(self, tag: str, attrs: dict, parent: _Node | None):
        self.tag, self.attrs, self.children, self.parent = tag, attrs, [], parent

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def text(self, skip=None) -> str:
        parts: list[str] = []

        def walk(n: _Node) -> None:
            for c in n.children:
                if isinstance(c, str):
                    parts.append(c)
                elif c.tag not in _NO_TEXT and not (skip and skip(c)):
                    walk(c)

        walk(self)
        return "".join(parts)

    def iter(self):
        for c in self.children:
            if isinstance(c, _Node):
                yield c
                yield from c.iter()

    def ancestors(self):
        a = self.parent
        while a is not None:
            yield a
            a = a.parent


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, {k: (v or "") for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in _VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(_Node(tag, {k: (v or "") for k, v in attrs}, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:  # close whatever was left open inside
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def _parse(text: str) -> _Node:
    b = _TreeBuilder()
    b.feed(text)
    b.close()
    return b.root


def _linear(root: _Node):
    """The page in reading order, code cells' source left out: ("text", str), ("table", node), ("img", node) and
    ("heading", str) events."""
    def walk(n: _Node):
        for c in n.children:
            if isinstance(c, str):
                yield "text", c
            elif c.tag in _NO_TEXT or "cell_input" in c.classes:
                continue
            elif c.tag == "table":
                yield "table", c
            elif c.tag == "img":
                yield "img", c
            elif c.tag in ("h1", "h2", "h3", "h4"):
                yield "heading", re.sub(r"\s+", " ", c.text()).strip().rstrip("#").strip()
            else:
                yield from walk(c)
                if c.tag in ("p", "div", "li", "td", "th", "tr", "pre", "section", "dd", "dt"):
                    yield "text", "\n"
    yield from walk(root)


def _table_rows(table: _Node) -> tuple[list[str], list[list[str]]]:
    rows = [r for r in table.iter() if r.tag == "tr"]
    cells = [[re.sub(r"\s+", " ", c.text()).strip() for c in r.children if isinstance(c, _Node) and c.tag in ("th", "td")]
             for r in rows]
    head = [r for r in rows if any(a.tag == "thead" for a in r.ancestors())]
    n_head = len(head) if head else 1
    return (cells[n_head - 1] if cells[:n_head] else []), cells[n_head:]
