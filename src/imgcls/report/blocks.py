"""HTML building blocks of report.html: one page, inline CSS, images as data: URIs, no script,
nothing fetched from a network. Every function returns escaped HTML text."""
from __future__ import annotations

import base64
from html import escape

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; margin: 0; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: 1rem 2rem; }
header h1 { margin: 0; font-size: 1.4rem; } header p { margin: .2rem 0 0; color: #c9cfdb; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #dde1e8; padding: .5rem 2rem; z-index: 1;
      display: flex; flex-wrap: wrap; gap: .2rem 1.2rem; }
nav a { color: #2456c7; text-decoration: none; white-space: nowrap; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem 2rem 3rem; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 1rem 1.5rem; margin: 1.2rem 0; }
h2 { margin-top: 0; font-size: 1.2rem; }
table { border-collapse: collapse; margin: .5rem 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e5e8ee; padding: .25rem .7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { background: #f3f4f7; padding: .8rem; overflow-x: auto; font-size: 13px; }
img { max-width: 100%; height: auto; }
/* Panels keep their own size (captions drawn into them stay legible), shrinking only on narrow screens. */
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 400px), 1fr)); gap: 1.2rem; }
figure { margin: 0; min-width: 0; } figcaption { font-size: 14px; color: #2b3240; overflow-wrap: anywhere; }
.tile figcaption span { display: block; }
.tile .file { font: 600 14px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
              white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1.2rem; margin: .6rem 0; }
dl.facts dt { color: #4a5263; } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
dl.settings { grid-template-columns: repeat(auto-fill, minmax(8rem, max-content) minmax(8rem, 14rem)); font-size: 14px; }
details summary { cursor: pointer; color: #2456c7; }
.note { color: #6b7385; font-style: italic; }
.warn { color: #a4440b; }
.metric { display: inline-block; margin: 0 2.2rem .3rem 0; } .metric b { font-size: 1.3rem; margin-right: .35rem; }
"""


def image(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{escape(alt)}">'


def figure(png: bytes, caption: str) -> str:
    return f"<figure>{image(png, caption)}<figcaption>{escape(caption)}</figcaption></figure>"


def tile(png: bytes, name: str, *lines: str) -> str:
    """An image captioned with a file name (one line, shortened with an ellipsis, whole on hover) and `lines`."""
    text = "".join(f"<span>{escape(line)}</span>" for line in lines)
    return (f'<figure class="tile">{image(png, f"{name}: " + ", ".join(lines))}<figcaption>'
            f'<span class="file" title="{escape(name)}">{escape(name)}</span>{text}</figcaption></figure>')


def gallery(figures: list[str]) -> str:
    return f'<div class="gallery">{"".join(figures)}</div>'


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def items(texts: list[str], css_class: str = "") -> str:
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<ul{attribute}>" + "".join(f"<li>{escape(t)}</li>" for t in texts) + "</ul>"


def headline(pairs: list[tuple[str, str]]) -> str:
    return "<p>" + "".join(f'<span class="metric"><b>{escape(value)}</b>{escape(name)}</span>' for name, value in pairs) + "</p>"


def facts(pairs: list[tuple[str, str]], css_class: str = "") -> str:
    """Name-value pairs; css_class 'settings' lays many short ones out in columns."""
    entries = "".join(f"<dt>{escape(name)}</dt><dd>{escape(value)}</dd>" for name, value in pairs)
    return f'<dl class="{f"facts {css_class}".strip()}">{entries}</dl>'


def details(summary: str, html: str) -> str:
    """Folded content that opens on a click, without script."""
    return f"<details><summary>{escape(summary)}</summary>{html}</details>"


def preformatted(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """sections: (id, heading, body HTML)."""
    nav = "".join(f'<a href="#{sid}">{escape(heading)}</a>' for sid, heading, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{escape(heading)}</h2>{html}</section>' for sid, heading, html in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body><header><h1>{escape(title)}</h1><p>{escape(subtitle)}</p></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>")
