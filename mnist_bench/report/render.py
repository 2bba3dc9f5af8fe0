"""The report's document model and its renderers: blocks (headings, paragraphs, lists, tables, plots) to
Markdown, to self-contained HTML (plots embedded as data: URIs), and tables to CSV that a spreadsheet reads as
text and figures, never as formulas."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from itertools import cycle

import pandas as pd

Block = tuple[str, object]  # ("h2" | "p", str), ("ul", list[str]), ("table", DataFrame), ("plot", Plot)


CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.85em}"
    "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;vertical-align:top}"
    "th{background:#eee}code{background:#f3f3f3;padding:0 .2em}"
    "figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:.85em;color:#555}"
)


def _one_line(text: object) -> str:
    """Text on one line: a newline in a name or an error message must not start a heading, item or row."""
    return " ".join(str(text).split())


def _markdown_table(table: pd.DataFrame) -> str:
    """A pipe table; a "|" inside a cell is escaped and newlines are spaces, so that no cell splits its row."""
    cells = table.astype(str).map(lambda cell: _one_line(cell).replace("|", "\\|"))
    lines = ["| " + " | ".join(map(_one_line, cells.columns)) + " |", "|" + "---|" * len(cells.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)])


# MLflow 3's artifact view renders Markdown, but writes an image whose address has no scheme (``curves.png``) as
# the text "[alt](curves.png)", and its URL filter drops data: URIs; its HTML view shows report.html in an
# iframe, data: images included. (Read in mlflow/server/js/build: the markdown view's img component and
# urlTransform.) So the Markdown keeps plain relative links, right on GitHub and in editors, and says where to look.
MLFLOW_NOTE = (
    "Viewing this in MLflow's UI? Open `report.html` beside it instead: MLflow's Markdown preview shows the "
    "plots below as text links, while `report.html` carries them inside itself."
)


def to_markdown(title: str, blocks: Sequence[Block]) -> str:
    """report.md: the images beside it, referred to by file name, and a pointer to report.html for MLflow."""
    parts = [f"# {_one_line(title)}", MLFLOW_NOTE]
    for kind, content in blocks:
        match kind:
            case "h2":
                parts.append(f"## {_one_line(content)}")
            case "p":
                parts.append(_one_line(content))
            case "ul":
                parts.append("\n".join(f"- {_one_line(item)}" for item in content))
            case "table":
                parts.append(_markdown_table(content))
            case "plot":
                parts.append(f"![{content.name}]({content.name})\n\n{_one_line(content.caption)}")
    return "\n\n".join(parts) + "\n"


_FORMULA_START = re.compile(r"[=+\-@\t\r]")


_SIGNED_NUMBER = re.compile(r"[+-]\d*\.?\d+(e[+-]?\d+)?[%x]?", re.IGNORECASE)  # "-0.3%", "+1.2x": figures


def to_csv(table: pd.DataFrame) -> bytes:
    """The table as CSV that a spreadsheet shows as text: a text cell that starts like a formula (= + - @, tab
    or carriage return) gets a leading apostrophe (OWASP's advice against CSV injection); figures stay as they are."""

    def defused(cell: object) -> object:
        formula = isinstance(cell, str) and _FORMULA_START.match(cell) and not _SIGNED_NUMBER.fullmatch(cell)
        return f"'{cell}" if formula else cell

    return table.map(defused).to_csv(index=False).encode()


_CODE_SPAN = re.compile(r"(`[^`]+`)")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    """Escaped text with the only Markdown the report's prose uses: `code` spans and **strong** words (the
    headline's pair), never inside a code span, where ``**`` is literal."""
    pieces = _CODE_SPAN.split(text)  # odd places hold the code spans
    return "".join(
        f"<code>{html.escape(piece[1:-1])}</code>" if odd else _STRONG.sub(r"<strong>\1</strong>", html.escape(piece))
        for odd, piece in zip(cycle((False, True)), pieces)
    )


def to_html(title: str, blocks: Sequence[Block]) -> str:
    """One page that opens offline: inline CSS, PNGs as data: URIs, no script, font or external link."""
    parts = [f"<h1>{_inline(title)}</h1>"]
    for kind, content in blocks:
        match kind:
            case "h2":
                parts.append(f"<h2>{_inline(content)}</h2>")
            case "p":
                parts.append(f"<p>{_inline(content)}</p>")
            case "ul":
                parts.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in content) + "</ul>")
            case "table":
                parts.append(content.to_html(index=False, border=0, na_rep=""))
            case "plot":
                data = base64.b64encode(content.png).decode("ascii")
                parts.append(
                    f'<figure><img alt="{html.escape(content.name)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(content.caption)}</figcaption></figure>"
                )
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style>'
    return f"<!DOCTYPE html>\n<html><head>{head}</head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
