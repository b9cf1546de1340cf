"""What a person sees: the HTML report and the dbt docs site rendered in headless Chromium.

Screenshots go to `$PIPELINE_TEST_ARTIFACTS/browser/` (default `.state/test-artifacts/browser/`, git-ignored).
Skipped with a message when Debian's chromium is not installed (`make test` installs it when it can).
"""

from __future__ import annotations

import re
import struct
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.browser_check import Chromium, find_chromium
from tests.support.env import pipeline_env
from tests.support.report_sample import AS_OF

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_chromium() is None, reason="chromium not installed: apt-get install chromium"),
]

ARTIFACTS = "browser"
REPORT_H2 = {"summary", "portfolios", "market", "pipeline-health", "data-notes"}
REPORT_H3 = {"summary-breaches", "summary-drawdowns", "market-volatility", "market-correlation",
             "market-factor-exposures", "market-anomalies", "pipeline-durations", "pipeline-rows",
             "pipeline-failures"}


@pytest.fixture(scope="module")
def browser():
    with Chromium(width=1366, height=900) as b:
        yield b


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report_html(sample_gold_url, tmp_path_factory) -> Path:
    from etl.report import run_report

    with pipeline_env(sample_gold_url, tmp_path_factory.mktemp("browser-data")):
        return run_report(AS_OF, sql_dir=tmp_path_factory.mktemp("no-sql"))


def test_report_renders_with_headings_and_charts(browser, report_html, artifacts):
    page = browser.check(report_html.as_uri(), artifacts, name="risk-report", settle_s=0.3)
    assert page.title == "Risk report 2026-01-31"
    assert REPORT_H2 <= page.heading_ids
    assert REPORT_H3 <= page.heading_ids
    assert page.charts == 5  # market and pipeline; the portfolios' charts are on their detail pages
    assert page.dom.count('<figure class="chart') == 5
    assert page.console_errors == []
    assert _png_size(page.screenshot) == (1366, 900)
    width, height = _png_size(page.full_screenshot)
    assert width == 1366 and height > 2000  # the whole page, not just the first screen
    detail = browser.check((report_html.parent / "portfolio-p-core.html").as_uri(), artifacts,
                           name="risk-report-p-core", settle_s=0.3)
    assert "portfolio-p-core" in detail.heading_ids and detail.charts == 4 and detail.console_errors == []


def test_report_fits_a_narrow_laptop_window(report_html, artifacts):
    with Chromium(width=1024, height=768) as small:
        page = small.check(report_html.as_uri(), artifacts, name="risk-report-1024", settle_s=0.3)
    assert page.console_errors == []
    assert _png_size(page.full_screenshot)[0] == 1024  # no horizontal overflow widened the page


def test_console_errors_are_reported(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><h2 id="x">x</h2><script>console.error("boom"); nope();</script></body></html>')
    page = browser.check(bad.as_uri(), settle_s=0.1)
    assert page.heading_ids == {"x"}
    assert page.console_errors[0] == "console.error: boom"
    assert page.console_errors[1].startswith("uncaught: ReferenceError: nope is not defined")


# dbt-docs' own page requests a few URLs before Angular fills in their templates ("{{ getIcon(...) }}",
# "${require('./assets/favicons/favicon.ico')}"): upstream 404s, harmless, not ours to fix.
DBT_DOCS_UPSTREAM_404 = re.compile(r"status of 404 .*(%7B%7B|%7Brequire\()")


@pytest.fixture
def http_dir():
    """Serve a folder over HTTP like `dbt docs serve` does (file:// pages cannot load their own frames)."""
    servers = []

    def serve(folder: Path) -> str:
        handler = partial(QuietHandler, directory=str(folder))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_dbt_docs_site_renders(browser, pg_url, artifacts, tmp_path, monkeypatch, http_dir):
    from etl.settings import get_settings
    from etl.warehouse import docs

    monkeypatch.setenv("PIPELINE_DATABASE_URL", pg_url)
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))  # dbt target/ of our own
    static = docs(get_settings())
    assert static.exists(), f"dbt docs generate --static did not write {static}"
    base = http_dir(static.parent)
    page = browser.check(f"{base}/{static.name}", artifacts, name="dbt-docs", settle_s=3.0)
    errors = [e for e in page.console_errors if not DBT_DOCS_UPSTREAM_404.search(e)]
    assert errors == []
    assert page.title == "dbt Docs"
    assert page.charts > 10                     # the sidebar's icons rendered: Angular ran
    assert "fact_risk_metrics" in page.dom      # the embedded manifest lists the gold marts
    assert _png_size(page.screenshot) == (1366, 900)
