"""Limit-breach alerts against the real Postgres (a sample gold schema), a real HTTP webhook receiver and a real
(tiny) SMTP server: exactly one alert per channel per breach, however often the step runs."""

from __future__ import annotations

import json
import logging
import socketserver
import threading
from datetime import date
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from etl.db import scratch_database
from etl.errors import IncompleteInputError
from etl.redaction import redact_text
from etl.report import alerts
from etl.settings import get_settings
from tests.support.report_sample import AS_OF, create_gold, sample_frames


@pytest.fixture
def env(sample_gold_url, data_dir, monkeypatch):
    monkeypatch.setenv("PIPELINE_DATABASE_URL", sample_gold_url)
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("ALERT_EMAIL_TO", raising=False)
    return monkeypatch


class Webhook:
    """A local HTTP server that records JSON bodies; `fail_next` answers that many requests with HTTP 500."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.fail_next = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.fail_next:
                    hook.fail_next -= 1
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"boom")
                    return
                hook.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib: greeting, EHLO, MAIL, RCPT, DATA (dot-terminated), QUIT."""

    def handle(self):
        self.wfile.write(b"220 localhost test SMTP\r\n")
        in_data, lines = False, []
        while line := self.rfile.readline():
            if in_data:
                if line in (b".\r\n", b".\n"):
                    self.server.messages.append(b"".join(lines))
                    in_data, lines = False, []
                    self.wfile.write(b"250 queued\r\n")
                else:
                    lines.append(line[1:] if line.startswith(b"..") else line)
                continue
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250 localhost\r\n")
            elif verb == b"DATA":
                in_data = True
                self.wfile.write(b"354 end with <CRLF>.<CRLF>\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), SmtpHandler)
    server.daemon_threads = True
    server.messages = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _jsonl(data_dir) -> list[dict]:
    path = data_dir / "alerts" / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def airflow_logging():
    """Importing Airflow (for its [smtp] settings) reconfigures logging; do it before caplog attaches its handler."""
    import airflow.configuration  # noqa: F401


def test_each_breach_alerted_once_per_channel_across_runs(env, data_dir, webhook, smtp_server, airflow_logging,
                                                          caplog):
    env.setenv("ALERT_WEBHOOK_URL", webhook.url)
    env.setenv("ALERT_EMAIL_TO", "risk@example.com")
    env.setenv("AIRFLOW__SMTP__SMTP_HOST", "127.0.0.1")
    env.setenv("AIRFLOW__SMTP__SMTP_PORT", str(smtp_server.server_address[1]))
    env.setenv("AIRFLOW__SMTP__SMTP_STARTTLS", "False")
    env.setenv("AIRFLOW__SMTP__SMTP_SSL", "False")
    env.setenv("AIRFLOW__SMTP__SMTP_MAIL_FROM", "pipeline@example.com")
    caplog.set_level(logging.WARNING, logger="etl.report.alerts")

    assert alerts.send_alerts(AS_OF) == 2
    assert alerts.send_alerts(AS_OF) == 0   # second run: nothing new
    assert alerts.send_alerts() == 0        # default as-of = latest in gold: the same day

    texts = sorted(b["text"] for b in webhook.bodies)
    assert len(texts) == 2
    assert "portfolio P-ALT concentration limit on 2026-01-31" in texts[0] and "vs limit 50.0%" in texts[0]
    assert "portfolio P-CORE var limit on 2026-01-31" in texts[1] and "vs limit 3,500.00" in texts[1]

    mails = [message_from_bytes(m) for m in smtp_server.messages]
    assert sorted(m["Subject"] for m in mails) == [
        "[risk] concentration limit breach: P-ALT on 2026-01-31", "[risk] var limit breach: P-CORE on 2026-01-31"]
    assert {m["To"] for m in mails} == {"risk@example.com"}
    assert {m["From"] for m in mails} == {"pipeline@example.com"}

    records = _jsonl(data_dir)
    assert sorted((r["portfolio_id"], r["limit_type"]) for r in records) == [("P-ALT", "concentration"),
                                                                             ("P-CORE", "var")]
    core = next(r for r in records if r["portfolio_id"] == "P-CORE")
    frames = sample_frames(AS_OF)
    expected = frames["fact_risk_metrics"].set_index("portfolio_id").at["P-CORE", "var_99_hist"]
    assert core["value"] == pytest.approx(expected) and core["limit_value"] == 3500.0
    assert core["metric"] == "var_99_hist" and core["as_of_date"] == "2026-01-31"

    log_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT ")]
    assert len(log_lines) == 2

    ledger = json.loads((data_dir / "alerts" / "ledger" / "as_of_date=2026-01-31" / "P-CORE__var.json").read_text())
    assert set(ledger["sent"]) == {"log", "file", "webhook", "email"}


def test_failed_webhook_is_retried_alone_on_the_next_run(env, data_dir, webhook):
    env.setenv("ALERT_WEBHOOK_URL", webhook.url)
    webhook.fail_next = 1  # the first POST gets HTTP 500

    with pytest.raises(alerts.AlertDeliveryError, match="HTTP 500"):
        alerts.send_alerts(AS_OF)
    assert len(webhook.bodies) == 1          # the other breach went through
    assert len(_jsonl(data_dir)) == 2        # log and file channels are not blocked by the webhook

    assert alerts.send_alerts(AS_OF) == 0    # nothing new for log/file...
    assert len(webhook.bodies) == 2          # ...but the failed webhook delivery is retried
    assert len({b["text"] for b in webhook.bodies}) == 2
    assert len(_jsonl(data_dir)) == 2        # and the file got no duplicates
    alerts.send_alerts(AS_OF)
    assert len(webhook.bodies) == 2


def test_default_channels_are_log_and_file_only(env, data_dir):
    assert alerts.configured_channels(get_settings()) == ["log", "file"]
    assert alerts.send_alerts(AS_OF) == 2
    assert len(_jsonl(data_dir)) == 2
    # no risk rows that day: not "0 breaches, all clear" but a refusal naming what is missing (exit 3)
    with pytest.raises(IncompleteInputError, match="fact_risk_metrics has no row for 2026-01-30"):
        alerts.send_alerts(date(2026, 1, 30))


def test_missing_breach_table_sends_nothing_and_is_incomplete(pg_url, data_dir, monkeypatch):
    with scratch_database(pg_url, "alerts_nobreach") as url:
        create_gold(url, sample_frames(AS_OF), skip=("fact_limit_breaches",))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with pytest.raises(IncompleteInputError, match="fact_limit_breaches cannot be read"):
            alerts.send_alerts(AS_OF)
    assert _jsonl(data_dir) == []


def test_unreachable_smtp_names_the_setting(env, data_dir, monkeypatch):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.setenv("ALERT_EMAIL_TO", "risk@example.com")
    env.setenv("AIRFLOW__SMTP__SMTP_HOST", "127.0.0.1")
    env.setenv("AIRFLOW__SMTP__SMTP_PORT", str(port))
    env.setenv("AIRFLOW__SMTP__SMTP_STARTTLS", "False")
    with pytest.raises(alerts.AlertDeliveryError, match=f"SMTP 127.0.0.1:{port}.*AIRFLOW__SMTP__SMTP_HOST"):
        alerts.send_alerts(AS_OF)
    assert len(_jsonl(data_dir)) == 2   # log and file still delivered


def test_a_bad_smtp_setting_fails_the_email_alone_and_never_resends_the_webhook(env, data_dir, webhook,
                                                                              airflow_logging):
    """Reading Airflow's [smtp] settings is part of the e-mail delivery: a bad one (a port that is not a number)
    fails that channel alone, naming the setting. It escaped the delivery: the ledger was not written, so every
    retry and every later run sent the webhook (and the log alert) again."""
    env.setenv("ALERT_WEBHOOK_URL", webhook.url)
    env.setenv("ALERT_EMAIL_TO", "risk@example.com")
    env.setenv("AIRFLOW__SMTP__SMTP_PORT", "25x")
    for _ in range(2):  # the task and its retry
        with pytest.raises(alerts.AlertDeliveryError, match=r"smtp_port.*25x.*AIRFLOW__SMTP__SMTP_HOST/PORT"):
            alerts.send_alerts(AS_OF)
    assert len(webhook.bodies) == 2 and len(_jsonl(data_dir)) == 2   # one per breach, once
    ledger = json.loads((data_dir / "alerts" / "ledger" / "as_of_date=2026-01-31" / "P-CORE__var.json").read_text())
    assert set(ledger["sent"]) == {"log", "file", "webhook"}        # e-mail: tried again on the next run


def test_secrets_redacted_in_run_log(env, data_dir):
    """A failed webhook delivery: neither the error, the log nor the run-log row (-> gold.fact_pipeline_runs, read
    by the reporting role, the HTML and SQL reports) carries the webhook's secret path."""
    import socket

    from etl import runlog
    from etl.orchestration import tasks

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{port}/services/T0AB/B0CD/s3cr3tT0ken")
    with pytest.raises(alerts.AlertDeliveryError) as err:
        tasks.send_alerts(AS_OF, settings=get_settings())
    assert "s3cr3tT0ken" not in str(err.value) and f"127.0.0.1:{port}/***" in str(err.value)
    rows = runlog.read_all(get_settings())
    assert rows["status"].tolist() == ["failed"]
    message = rows["message"].iat[0]
    assert "AlertDeliveryError" in message and "127.0.0.1" in message
    assert "s3cr3tT0ken" not in message and "B0CD" not in message
    assert redact_text("postgresql://etl:hunter2@db:5432/warehouse password=x2 token: abc Bearer abcdefgh12") \
        == "postgresql://etl:***@db:5432/warehouse password=*** token: *** Bearer ***"


def test_alerts_delivered_at_once_by_two_runs_are_all_in_the_alert_file(data_dir):
    """The end-of-day `send_alerts` and an intraday run's alerts (two DAGs, two processes) deliver at the same
    time: each appended to alerts.jsonl by reading it whole and writing it back, so one run's lines were lost while
    its ledger said the file channel had carried them (never sent again): 200 alerts, about half in the file."""
    from etl.storage import get_store

    store, settings = get_store(get_settings()), get_settings()

    def run(name: str) -> None:
        for i in range(100):
            breach = {"portfolio_id": f"{name}{i:03d}", "limit_type": "var", "as_of_date": date(2026, 3, 1),
                      "value": 2.0, "limit_value": 1.0}
            alerts.deliver(store, alerts.ledger_path(breach["portfolio_id"], date(2026, 3, 1), "var"), breach,
                           alerts.message(breach), "subject", ["file"], settings)

    runs = [threading.Thread(target=run, args=(name,)) for name in ("eod", "intraday")]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    lines = (data_dir / alerts.ALERTS_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["portfolio_id"] for line in lines) == sorted(
        f"{name}{i:03d}" for name in ("eod", "intraday") for i in range(100))
