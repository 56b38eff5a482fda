"""A report as a model: headings, paragraphs, lists, tables, code and figures, rendered to Markdown
and to a self-contained HTML page by two renderers. Text inside a block is inline Markdown
(`code`, **bold**, _emphasis_, [links](target)); HTML renders it with markdown-it and lays the
page out with a Jinja2 template, so nothing parses the report's own Markdown back.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Item:
    text: str
    children: tuple[str, ...] = ()  # one level of sub-items


@dataclass(frozen=True)
class Bullets:
    items: tuple[Item, ...]
    ordered: bool = False


@dataclass(frozen=True)
class Table:
    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    flagged: frozenset[int] = frozenset()  # rows shown as failed (HTML: highlighted)


@dataclass(frozen=True)
class Code:
    text: str
    lang: str = ""


@dataclass(frozen=True)
class Figures:
    items: tuple[tuple[str, Path], ...]  # (title, PNG file)


Block = Union[Heading, Paragraph, Bullets, Table, Code, Figures]


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block | None) -> "Document":
        self.blocks.extend(b for b in blocks if b is not None)
        return self


def bullets(lines, ordered: bool = False) -> Bullets:
    """A list from strings and (text, [sub-items]) pairs."""
    return Bullets(tuple(Item(x) if isinstance(x, str) else Item(x[0], tuple(x[1])) for x in lines), ordered)


def table(head, rows, flagged=()) -> Table:
    return Table(tuple(map(str, head)), tuple(tuple(map(str, r)) for r in rows), frozenset(flagged))


# ---------------------------------------------------------------- Markdown

def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _markdown_lines(b: Block, base: Path) -> list[str]:
    if isinstance(b, Heading):
        return [f"{'#' * b.level} {b.text}"]
    if isinstance(b, Paragraph):
        return [b.text]
    if isinstance(b, Bullets):
        out = []
        for i, it in enumerate(b.items, start=1):
            out.append(f"{f'{i}.' if b.ordered else '-'} {it.text}")
            out += [f"  - {c}" for c in it.children]
        return out
    if isinstance(b, Table):
        return ["| " + " | ".join(map(_md_cell, b.head)) + " |", "|" + "---|" * len(b.head),
                *["| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows]]
    if isinstance(b, Code):
        return [f"```{b.lang}", b.text, "```"]
    if isinstance(b, Figures):
        return [f"![{t}]({p.relative_to(base).as_posix()})" for t, p in b.items]
    raise TypeError(f"not a report block: {b!r}")


def to_markdown(doc: Document, base: Path) -> str:
    """``base``: the folder the Markdown file is written to (figure paths are relative to it)."""
    lines = [f"# {doc.title}", ""]
    for b in doc.blocks:
        lines += [*_markdown_lines(b, base), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- HTML

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f0f0f0}tr.bad td{background:#fdecea}code{background:#f4f4f4;padding:0 3px}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}h1{border-bottom:2px solid #333}pre{background:#f6f6f6;padding:.7em}"""

PAGE = """<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{{ doc.title }}</title>
<style>{{ css }}</style></head><body>
<h1>{{ inline(doc.title) }}</h1>
{% for b in doc.blocks %}{% set kind = b.__class__.__name__ %}
{%- if kind == "Heading" %}<h{{ b.level }}>{{ inline(b.text) }}</h{{ b.level }}>
{%- elif kind == "Paragraph" %}<p>{{ inline(b.text) }}</p>
{%- elif kind == "Bullets" %}<{{ "ol" if b.ordered else "ul" }}>
{%- for it in b.items %}<li>{{ inline(it.text) }}{% if it.children %}<ul>{% for c in it.children %}<li>{{ inline(c) }}</li>{% endfor %}</ul>{% endif %}</li>{% endfor -%}
</{{ "ol" if b.ordered else "ul" }}>
{%- elif kind == "Table" %}<table><tr>{% for h in b.head %}<th>{{ inline(h) }}</th>{% endfor %}</tr>
{%- for r in b.rows %}<tr{% if loop.index0 in b.flagged %} class="bad"{% endif %}>{% for c in r %}<td>{{ inline(c) }}</td>{% endfor %}</tr>{% endfor -%}
</table>
{%- elif kind == "Code" %}<pre>{{ b.text }}</pre>
{%- elif kind == "Figures" %}{% for title, path in b.items %}<figure><img alt="{{ title }}" src="{{ png(path) }}"><figcaption>{{ title }}</figcaption></figure>{% endfor %}
{%- endif %}
{% endfor %}</body></html>
"""


def to_html(doc: Document, links: dict[str, str] | None = None) -> str:
    """A self-contained page: figures embedded as data URIs. ``links`` maps a link target to the
    one the page uses (a study's ``PHASE/report.md`` -> ``PHASE/report.html``)."""
    import jinja2
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    md = MarkdownIt("commonmark", {"html": False})  # raw HTML in a trial's error text stays text
    normalize = md.normalizeLink
    md.normalizeLink = lambda url: normalize((links or {}).get(url, url))

    def png(path: Path) -> str:
        return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()

    env = jinja2.Environment(autoescape=True, trim_blocks=False)
    return env.from_string(PAGE).render(doc=doc, css=Markup(CSS), png=png,
                                        inline=lambda text: Markup(md.renderInline(text)))
