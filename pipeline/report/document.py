"""A report as a list of blocks, written out as Markdown and as self-contained HTML.

Text may use `code`, **bold** and [links](url); nothing else is interpreted. Figures are PNG
files beside `report.md` and base64 `data:` URIs inside `report.html`, so the HTML
opens anywhere without its folder.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list


@dataclass
class Table:
    headers: list
    rows: list


@dataclass
class Image:
    filename: str
    png: bytes
    caption: str


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def heading(self, text, level=2):
        self.blocks.append(Heading(level, text))

    def paragraph(self, text):
        self.blocks.append(Paragraph(text))

    def bullets(self, items):
        self.blocks.append(Bullets(list(items)))

    def table(self, headers, rows):
        self.blocks.append(Table(list(headers), [list(r) for r in rows]))

    def figure(self, filename, figure, caption):
        """Adds a matplotlib `Figure`, rendered to PNG at 100 dpi."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        self.blocks.append(Image(filename, buffer.getvalue(), caption))

    @property
    def images(self):
        return [b for b in self.blocks if isinstance(b, Image)]

    def to_markdown(self):
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            if isinstance(block, Heading):
                out += [f"{'#' * block.level} {block.text}", ""]
            elif isinstance(block, Paragraph):
                out += [block.text, ""]
            elif isinstance(block, Bullets):
                out += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, Table):
                out.append("| " + " | ".join(map(str, block.headers)) + " |")
                out.append("|" + " --- |" * len(block.headers))
                out += ["| " + " | ".join(map(str, row)) + " |" for row in block.rows]
                out.append("")
            elif isinstance(block, Image):
                out += [f"![{block.caption}]({block.filename})", "", f"*{block.caption}*", ""]
        return "\n".join(out)

    def to_html(self):
        body = []
        for block in self.blocks:
            if isinstance(block, Heading):
                body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
            elif isinstance(block, Paragraph):
                body.append(f"<p>{_inline(block.text)}</p>")
            elif isinstance(block, Bullets):
                items = "".join(f"<li>{_inline(i)}</li>" for i in block.items)
                body.append(f"<ul>{items}</ul>")
            elif isinstance(block, Table):
                head = "".join(f"<th>{_inline(str(h))}</th>" for h in block.headers)
                rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row)
                               + "</tr>" for row in block.rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
                            "</table>")
            elif isinstance(block, Image):
                data = base64.b64encode(block.png).decode()
                body.append(f'<figure><img alt="{html.escape(block.caption)}" '
                            f'src="data:image/png;base64,{data}"><figcaption>'
                            f"{_inline(block.caption)}</figcaption></figure>")
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
                f"{html.escape(self.title)}</title><style>{STYLE}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>\n" + "\n".join(body) + "</body></html>\n")


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "line-height:1.45;color:#222}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f3f3f3}"
    "code{background:#f3f3f3;padding:0 .2em}img{max-width:100%}"
    "figcaption{font-style:italic;color:#555}"
)


def _inline(text):
    text = html.escape(text)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
