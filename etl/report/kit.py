"""The HTML kit the report and the cockpit share: one stylesheet, one KPI card, one table, one chart frame and the
page frames, as Jinja2 templates in etl/report/templates/ (shipped with the package).

Autoescape is on: portfolio names, products, reasons and notes come from reference files, gold and users, so every
value is escaped unless it is markup this code built (`Markup`: links, forms, inline SVG). Each part returns its HTML
as text and a page composes its sections from them; numbers read through the page's `Formats`
(etl/report/formatting.py). Pure Python (no pandas): the cockpit plugin imports it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

ENV = Environment(loader=PackageLoader("etl.report", "templates"), autoescape=True, undefined=StrictUndefined,
                  trim_blocks=True, lstrip_blocks=True)
_PARTS = ENV.get_template("kit.html").module

# One palette for the charts of both pages (matplotlib SVG in the report, Chart.js in the cockpit), the stylesheet's.
SERIES = ("#1f4e79", "#ef8f00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f", "#5d4037", "#455a64", "#ad1457",
          "#9e9d24")
GAIN, LOSS = "#2e7d32", "#c62828"
VALUE, VAR95, VAR99 = SERIES[0], SERIES[1], SERIES[3]  # market value; the VaR 95% and 99% lines


def e(v) -> str:
    """Text escaped for HTML built outside the templates (quotes too); None reads as nothing."""
    return html.escape("" if v is None else str(v), quote=True)


@dataclass(frozen=True)
class Column:
    """One column of a `table`. A cell is text by default (None reads as nothing); `fmt` makes it a number
    (right-aligned, read through `fmt`, green/red when `signed`), `text` reads text through a function (timestamps),
    `html` builds trusted markup from the whole row (links, forms)."""
    key: str
    header: str
    fmt: Callable[[Any], str] | None = None
    signed: bool = False
    text: Callable[[Any], str] | None = None
    html: Callable[[Mapping], str] | None = None
    currency: str | None = None   # the row's key naming the amount's currency: `fmt(v, row[currency])`


def sign_class(v, is_value: Callable[[object], bool]) -> str:
    """Green for a gain, red for a loss, no colour for a missing value (never a green "–")."""
    return "" if not is_value(v) else ("pos" if float(v) >= 0 else "neg")


def table(rows: Iterable[Mapping], columns: Sequence[Column], table_id: str | None, *,
          is_value: Callable[[object], bool], exact: bool = False) -> str:
    """`rows` as a table. `is_value` says what is a number (the caller's `Formats.is_value`). `exact`: each cell
    names its column (`data-key`) and a number carries its exact value (`data-value`), for the cockpit's readers."""
    def cell(row: Mapping, c: Column) -> tuple[str, str, str, str | None]:  # (text, class, data-key, data-value)
        key = c.key if exact else ""
        if c.html is not None:
            return Markup(c.html(row)), "", "", None
        v = row.get(c.key)
        if c.fmt is None:
            return (c.text(v) if c.text else ("" if v is None else str(v))), "", key, None
        cls = f"num {sign_class(v, is_value)}".strip() if c.signed else "num"
        text = c.fmt(v, row.get(c.currency)) if c.currency else c.fmt(v)
        return text, cls, key, (repr(float(v)) if exact and is_value(v) else None)

    headers = [(c.header, c.fmt is not None) for c in columns]
    return str(_PARTS.table(table_id, headers, [[cell(r, c) for c in columns] for r in rows]))


def kpi(label: str, value: str, kpi_id: str, cls: str = "", exact: float | None = None) -> str:
    """A KPI card; `exact`: the number behind `value` (written as `data-value`)."""
    return str(_PARTS.kpi(label, value, kpi_id, cls, None if exact is None else repr(float(exact))))


def figure(svg: str, fig_id: str, caption: str, narrow: bool = False) -> str:
    """A chart drawn on the server: inline SVG (etl/report/charts.py) with its caption."""
    return str(_PARTS.chart(fig_id, Markup(svg), caption, narrow))


def canvas(chart_id: str, height: int = 260) -> str:
    """A chart drawn in the browser: the canvas its Chart.js configuration is drawn on."""
    return str(_PARTS.chart(chart_id, height=height))


def status(status_id: str, as_of, missing: str | None = None) -> str:
    """The as-of day's status line: complete, or INCOMPLETE naming what is `missing` (never green over gaps)."""
    return str(_PARTS.status(status_id, as_of, missing))


def empty(text: str, message_id: str | None = None) -> str:
    """Nothing to show, said so."""
    return str(_PARTS.message("empty", text, message_id))


def note(text: str, message_id: str | None = None) -> str:
    """Something the reader must know (a missing table, a section that failed)."""
    return str(_PARTS.message("note", text, message_id))


def report_page(title: str, header: str, body: str) -> str:
    """A report file around its header and body (markup built from the kit)."""
    return ENV.get_template("report.html").render(title=title, header=Markup(header), body=Markup(body)) + "\n"


def cockpit_page(title: str, active: str, body: str, *, base: str, nav: Sequence[tuple[str, str, str]],
                 charts: list[dict] | None = None, as_of: str | None = None, refresh_url: str | None = None,
                 refresh_s: int = 0) -> str:
    """A cockpit page: `nav` (path, key, label) links, the as-of picker, `charts` as the page's JSON block."""
    data = Markup(json.dumps(charts or []).replace("</", "<\\/"))  # JSON in a script element: never a closing tag
    return ENV.get_template("cockpit.html").render(
        title=title, active=active, body=Markup(body), base=base, nav=nav, chart_data=data, as_of=as_of,
        refresh_url=refresh_url, refresh_s=refresh_s)
