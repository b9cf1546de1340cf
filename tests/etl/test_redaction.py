"""etl/redaction.py: credentials never leave the process in a run-log row, a CLI error or an alert error: URL
passwords, webhook paths, secret pairs, bearer tokens and the configured secrets become ***."""

from __future__ import annotations

import pytest

from etl.redaction import redact_text


@pytest.mark.parametrize(("text", "redacted"), [
    ("postgresql://etl:hunter2@db:5432/warehouse?sslpassword=abc&sslmode=require",
     "postgresql://etl:***@db:5432/warehouse?sslpassword=***&sslmode=require"),
    ("POST https://hooks.example.com/services/T0/B0/xyz failed", "POST https://hooks.example.com/*** failed"),
    ("Max retries exceeded with url: /services/T0/B0/xyz (Caused by ...)",
     "Max retries exceeded with url: /*** (Caused by ...)"),
    ("api_key=abc123 token: 'tok tok' SECRET_ACCESS_KEY=zzz", "api_key=*** token: *** SECRET_ACCESS_KEY=***"),
    ("Authorization: Bearer abcdefgh12345", "Authorization: Bearer ***"),
    ("no secret in 3 candles for BTC-USD", "no secret in 3 candles for BTC-USD"),
])
def test_redact_text(text, redacted, monkeypatch):
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    assert redact_text(text) == redacted


def test_redact_text_removes_the_configured_secrets_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "https://hooks.example.com/services/T0AB/B0CD/s3cr3tT0ken")
    monkeypatch.setenv("PIPELINE_DATABASE_URL", "postgresql://etl:dbpass99@db/warehouse")
    monkeypatch.setenv("PIPELINE_REPORTING_PASSWORD", "rep0rting")
    text = "posting to services/T0AB/B0CD/s3cr3tT0ken refused; login dbpass99 and rep0rting failed"
    assert redact_text(text) == "posting to *** refused; login *** and *** failed"
