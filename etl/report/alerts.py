"""Risk-limit alerts: each new breach in `gold.fact_limit_breaches` goes once to every configured channel.

Channels:
  log      a WARNING line (logger `etl.report.alerts`): always
  file     one JSON line per alert appended to `{data}/alerts/alerts.jsonl`: always
  webhook  POST of a Slack-compatible `{"text": ...}` to ALERT_WEBHOOK_URL: when set
  email    one message per breach to ALERT_EMAIL_TO through the SMTP server of Airflow's `[smtp]` settings
           (AIRFLOW__SMTP__SMTP_HOST, _PORT, _USER, _PASSWORD, _STARTTLS, _SSL, _MAIL_FROM): when set

Dedup ledger: `{data}/alerts/ledger/as_of_date=D/<portfolio_id>__<limit_type>.json`, keyed by
(portfolio_id, as_of_date, limit_type), records which channels already carried the breach. A channel that fails
is retried on the next run (the others are not re-sent) and the run raises AlertDeliveryError after trying them
all, so an Airflow retry finishes the job.

An ongoing breach alerts again each day, unless it is acknowledged (etl.report.breach_actions) and its utilisation
has not risen ALERT_ACK_STEP above its level when acknowledged, or its limit was raised and it is within the new one.

Intraday: `send_intraday_alerts` sends the committed limit rows of one 5-minute bucket (etl.risk.intraday_io), once
per portfolio, limit and UTC day (ledger key `intraday_<limit_type>`).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import smtplib
import uuid
from datetime import UTC, date, datetime
from email.message import EmailMessage

import pandas as pd

from etl.db import reporting_url
from etl.errors import ConfigError, DataNotFoundError, IncompleteInputError, PipelineError
from etl.measures import FRACTION_LIMITS
from etl.redaction import redact_text
from etl.report import cockpit, completeness
from etl.report.breach_actions import is_quiet
from etl.report.formatting import money_decimals
from etl.report.gold import GoldReader
from etl.risk.intraday import BREACH_TABLE, bucket_of
from etl.risk.intraday_io import committed_rows
from etl.settings import Settings, get_settings
from etl.storage import Store, get_store

log = logging.getLogger(__name__)

ALERTS_DIR = "alerts"
ALERTS_FILE = "alerts/alerts.jsonl"
LEDGER_DIR = "alerts/ledger"
WEBHOOK_TIMEOUT_S = 10.0
SMTP_TIMEOUT_S = 30.0


class AlertDeliveryError(PipelineError):
    """A configured channel (webhook, email) could not be reached; the breach is retried on the next run."""


def _key_name(portfolio_id: str, limit_type: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{portfolio_id}__{limit_type}")
    return safe.lstrip("._") or "breach"


def ledger_path(portfolio_id: str, as_of_date: date, limit_type: str) -> str:
    return posixpath.join(LEDGER_DIR, f"as_of_date={as_of_date.isoformat()}",
                          f"{_key_name(portfolio_id, limit_type)}.json")


def _fmt(limit_type: str, v: float, currency: str | None = None) -> str:
    if limit_type in FRACTION_LIMITS and abs(v) <= 5:
        return f"{v:.1%}"
    return f"{v:,.{money_decimals(currency)}f} {currency}" if currency else f"{v:,.2f}"


def message(breach: dict) -> str:
    t, ccy = breach["limit_type"], breach.get("base_currency")
    metric = f" ({breach['metric']})" if breach.get("metric") else ""
    when = f"at {breach['bucket_start']} (intraday)" if breach.get("bucket_start") else f"on {breach['as_of_date']}"
    if breach.get("breach_kind") == "uncomputable" or breach.get("value") is None:
        return (f"Risk limit UNCOMPUTABLE: portfolio {breach['portfolio_id']} {t} limit {when}: "
                f"the metric{metric} is not a finite number, so the limit {_fmt(t, breach['limit_value'], ccy)} "
                "cannot be shown to hold; treat it as breached and check the inputs")
    return (f"Risk limit breach: portfolio {breach['portfolio_id']} {t} limit {when}: "
            f"{_fmt(t, breach['value'], ccy)}{metric} vs limit {_fmt(t, breach['limit_value'], ccy)}")


def read_breaches(as_of: date | None, settings: Settings) -> tuple[date | None, list[dict]]:
    """Breaches of the as-of day from gold (default day: the latest in gold.fact_risk_metrics)."""
    return _read_breaches(as_of, settings)[:2]


def _read_breaches(as_of: date | None, settings: Settings):
    with GoldReader(reporting_url(settings)) as reader:
        as_of = as_of or reader.latest_as_of()
        status = completeness.check(reader, as_of, settings)
        df = reader.frame("fact_limit_breaches", """
            select * from gold.fact_limit_breaches where as_of_date = %(as_of)s
            order by portfolio_id, limit_type""", {"as_of": as_of})
        held = {} if df is None else held_breaches(reader, as_of, settings.alert_ack_step)
    if df is None:
        log.warning("alerts: gold.fact_limit_breaches is not available; no alerts for %s", as_of)
        return as_of, [], status, held
    df["value"] = df["value"].astype(float)  # NULL (uncomputable) -> NaN -> None below
    df["limit_value"] = df["limit_value"].astype(float)
    df["as_of_date"] = pd.to_datetime(df["as_of_date"]).dt.date
    if "metric" not in df:
        df["metric"] = None
    df = df.astype(object).where(df.notna(), None)  # JSON-friendly: None, not NaN
    return as_of, df.to_dict("records"), status, held


def held_breaches(reader: GoldReader, as_of: date, step: float) -> dict[tuple[str, str], dict]:
    """(portfolio_id, limit_type) -> the action holding back its alert (etl.report.breach_actions.is_quiet):
    acknowledged and not `step` worse since, or within its raised limit."""
    return {(b["portfolio_id"], b["limit_type"]): b["action"] for b in cockpit.breaches(reader, as_of)[0]
            if b["scope"] == "eod" and is_quiet(b, step)}


# ---- channels --------------------------------------------------------------------------------------------------
def _append_lines(store: Store, rel: str, lines: list[str]) -> None:
    """Append lines to a text file. On a local disk one O_APPEND write: runs appending at once (the end-of-day alerts
    and an intraday run's, two DAGs) each land whole, none overwrites the other's (reading the file and writing it
    back lost one run's lines). An object store has no append: read, add, write under a temp name, rename there
    (two runs appending at the same moment can still lose one's lines: docs/report.md)."""
    data = "".join(line + "\n" for line in lines).encode()
    if store.is_local:
        folder = posixpath.dirname(store.path(rel))
        store.fs.create_dir(folder, recursive=True)
        fd = os.open(store.path(rel), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    old = b""
    if store.exists(rel):
        with store.fs.open_input_stream(store.path(rel)) as f:
            old = f.read()
    final = store.path(rel)
    folder, name = posixpath.split(final)
    store.fs.create_dir(folder, recursive=True)
    tmp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")
    with store.fs.open_output_stream(tmp) as out:
        out.write(old + data)
    store.fs.move(tmp, final)


def send_webhook(url: str, text: str) -> None:
    import requests

    shown = redact_text(url)  # the webhook's path is its secret: never in an error, a log line or the run log
    try:
        resp = requests.post(url, json={"text": text}, timeout=WEBHOOK_TIMEOUT_S)
    except requests.RequestException as exc:
        raise AlertDeliveryError(f"alert webhook {shown} unreachable: {redact_text(str(exc))}") from None
    if resp.status_code >= 300:
        raise AlertDeliveryError(f"alert webhook {shown} answered HTTP {resp.status_code}: "
                                 f"{redact_text(resp.text[:200])}")


def smtp_settings() -> dict:
    """Airflow's `[smtp]` section (airflow.cfg or AIRFLOW__SMTP__* variables), read through Airflow's config.

    A bad value is an AlertDeliveryError, as an unreachable server: the e-mail channel fails alone and the
    channels already delivered are recorded in the ledger (never sent again by a retry)."""
    from airflow.configuration import conf
    from airflow.exceptions import AirflowConfigException

    try:
        return {
            "host": conf.get("smtp", "smtp_host"),
            "port": conf.getint("smtp", "smtp_port"),
            "user": conf.get("smtp", "smtp_user", fallback=None),
            "password": conf.get("smtp", "smtp_password", fallback=None),
            "starttls": conf.getboolean("smtp", "smtp_starttls"),
            "ssl": conf.getboolean("smtp", "smtp_ssl"),
            "mail_from": conf.get("smtp", "smtp_mail_from", fallback=None) or "airflow@localhost",
            "timeout": conf.getint("smtp", "smtp_timeout", fallback=int(SMTP_TIMEOUT_S)),
        }
    except (AirflowConfigException, ValueError) as exc:  # its message names the key and the value
        raise AlertDeliveryError(f"alert e-mail: Airflow's [smtp] settings are not usable: {exc} (set "
                                 "AIRFLOW__SMTP__SMTP_HOST/PORT/STARTTLS/SSL/TIMEOUT)") from None


def send_email(to: str, subject: str, body: str, smtp: dict) -> None:
    msg = EmailMessage()
    msg["From"] = smtp["mail_from"]
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    where = f"{smtp['host']}:{smtp['port']}"
    try:
        cls = smtplib.SMTP_SSL if smtp["ssl"] else smtplib.SMTP
        with cls(smtp["host"], smtp["port"], timeout=smtp["timeout"]) as server:
            if smtp["starttls"] and not smtp["ssl"]:
                server.starttls()
            if smtp["user"] and smtp["password"]:
                server.login(smtp["user"], smtp["password"])
            server.send_message(msg, to_addrs=[a.strip() for a in to.split(",") if a.strip()])
    except (OSError, smtplib.SMTPException) as exc:
        raise AlertDeliveryError(f"alert e-mail via SMTP {where} failed: {exc} (check Airflow's [smtp] settings, "
                                 "e.g. AIRFLOW__SMTP__SMTP_HOST/PORT/STARTTLS)") from exc


# ---- the step --------------------------------------------------------------------------------------------------
def configured_channels(settings: Settings) -> list[str]:
    channels = ["log", "file"]
    if settings.alert_webhook_url:
        channels.append("webhook")
    if settings.alert_email_to:
        channels.append("email")
    return channels


def send_alerts(as_of: date | None = None, settings: Settings | None = None) -> int:
    """Send every not-yet-alerted breach of the as-of day to each configured channel; return how many breaches
    were alerted for the first time (0 when all were alerted before).
    """
    settings = settings or get_settings()
    _check_settings(settings)
    as_of, breaches, status, held = _read_breaches(as_of, settings)
    store = get_store(settings)
    channels = configured_channels(settings)
    smtp = None
    new, errors = 0, []
    for breach in breaches:
        act = held.get((breach["portfolio_id"], breach["limit_type"]))
        if act:
            log.info("alert held for %s %s on %s: %s by %s until %s (%s)", breach["portfolio_id"],
                     breach["limit_type"], breach["as_of_date"], act["action"], act["by_user"], act["valid_until"],
                     act["reason"])
            continue
        rel = ledger_path(str(breach["portfolio_id"]), breach["as_of_date"], str(breach["limit_type"]))
        subject = f"[risk] {breach['limit_type']} limit breach: {breach['portfolio_id']} on {breach['as_of_date']}"
        first, errs, smtp = deliver(store, rel, breach, message(breach), subject, channels, settings, smtp)
        new += first
        errors += errs
    log.info("alerts for %s: %d breaches, %d newly alerted, channels %s", as_of, len(breaches), new, channels)
    if not status.complete:  # the breaches gold has were sent; the day itself is not all-clear
        raise IncompleteInputError(f"alerts for {as_of}: {status}")
    if errors:
        raise AlertDeliveryError(f"{len(errors)} alert deliveries failed for {as_of} (they are retried on the next "
                                 f"run): {errors[0]}")
    return new


def send_intraday_alerts(interval_start: datetime | str, settings: Settings | None = None) -> int:
    """Alert each breach of the bucket once per portfolio, limit and UTC day on every configured channel (the
    alert ledger keyed `intraday_<limit_type>`), and record each clearing in the ledger and the alert file.
    Returns how many breaches were alerted for the first time."""
    settings = settings or get_settings()
    bucket = bucket_of(interval_start)
    store = get_store(settings)
    rows = committed_rows(store, BREACH_TABLE, bucket)
    if rows is None:
        raise DataNotFoundError(f"no committed intraday limit checks for {bucket.isoformat()}: run the intraday risk "
                                "task for this interval first")
    rows = rows.astype(object).where(rows.notna(), None).to_dict("records")
    channels = configured_channels(settings)
    new, errors, smtp = 0, [], None
    when = bucket.strftime("%Y-%m-%d %H:%M UTC")
    for row in rows:
        breach = {**row, "bucket_start": when, "breached_at": str(row["breached_at"]), "scope": "intraday",
                  "as_of_date": bucket.date()}
        ledger = ledger_path(str(row["portfolio_id"]), bucket.date(), f"intraday_{row['limit_type']}")
        if row["status"] == "cleared":
            record_cleared(store, ledger, breach)
            continue
        subject = f"[risk] intraday {row['limit_type']} limit breach: {row['portfolio_id']} at {when}"
        first, errs, smtp = deliver(store, ledger, breach, message(breach), subject, channels,
                                           settings, smtp)
        new += first
        errors += errs
    log.info("intraday alerts at %s: %d limit row(s), %d newly alerted, channels %s", when, len(rows), new, channels)
    if errors:
        raise AlertDeliveryError(f"{len(errors)} intraday alert deliveries failed at {when} (retried on the "
                                        f"next attempt): {errors[0]}")
    return new


def _check_settings(settings: Settings) -> None:
    if settings.alert_email_to and "@" not in settings.alert_email_to:
        raise ConfigError(f"ALERT_EMAIL_TO={settings.alert_email_to!r} is not an e-mail address")


def deliver(store: Store, rel: str, breach: dict, text: str, subject: str, channels: list[str],
            settings: Settings, smtp: dict | None = None) -> tuple[bool, list[str], dict | None]:
    """Send one breach to each channel its ledger entry `rel` has not carried yet, then update the entry.
    Returns (alerted for the first time, delivery errors, the SMTP settings read so far)."""
    entry = store.read_json(rel) if store.exists(rel) else {"breach": breach, "sent": {}}
    todo = [c for c in channels if c not in entry["sent"]]
    if not todo:
        return False, [], smtp
    errors, jsonl = [], []
    now = datetime.now(UTC).isoformat()
    for channel in todo:
        try:
            if channel == "log":
                log.warning("ALERT %s", text)
            elif channel == "file":
                jsonl.append(json.dumps({**breach, "message": text, "alerted_at": now}, default=str, sort_keys=True))
            elif channel == "webhook":
                send_webhook(settings.alert_webhook_url, text)
            elif channel == "email":
                if smtp is None:
                    smtp = smtp_settings()
                send_email(settings.alert_email_to, subject, text, smtp)
        except AlertDeliveryError as exc:
            log.error("alert channel %s failed for %s: %s", channel, rel, exc)
            errors.append(str(exc))
            continue
        entry["sent"][channel] = now
    if jsonl:  # the alert file before the ledger: a crash in between re-sends rather than loses an alert
        _append_lines(store, ALERTS_FILE, jsonl)
    store.write_json(rel, entry)
    return "log" in todo, errors, smtp


def record_cleared(store: Store, rel: str, cleared: dict) -> bool:
    """Record that an alerted breach is back under its limit: `cleared_at` in its ledger entry (each episode
    kept under `episodes`), a `cleared` line in the alert file and the log. No-op when never alerted or when this
    clearing is recorded already (a rerun); returns whether it was recorded now."""
    if not store.exists(rel):
        return False
    entry = store.read_json(rel)
    episode = {"breached_at": str(cleared.get("breached_at")), "cleared_at": str(cleared.get("bucket_start"))}
    if episode in entry.get("episodes", []):
        return False
    entry.setdefault("episodes", []).append(episode)
    entry["cleared_at"] = episode["cleared_at"]
    text = (f"Risk limit cleared: portfolio {cleared['portfolio_id']} {cleared['limit_type']} limit back under "
            f"{_fmt(cleared['limit_type'], cleared['limit_value'], cleared.get('base_currency'))} at "
            f"{episode['cleared_at']} (in breach since {episode['breached_at']})")
    log.info("ALERT CLEARED %s", text)
    _append_lines(store, ALERTS_FILE, [json.dumps({**cleared, "event": "cleared", "message": text,
                                                   "recorded_at": datetime.now(UTC).isoformat()},
                                                  default=str, sort_keys=True)])
    store.write_json(rel, entry)
    return True
