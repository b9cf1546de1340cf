"""Redaction of credentials from text that leaves the process: run-log messages (they reach gold, which the reporting
role reads), the CLI's one-line errors and alert delivery errors. A leaf module: it needs only the settings."""

from __future__ import annotations

import re

from etl.settings import get_settings

_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://([^\s/?#@'\"<>]*@)?([^\s/?#'\"<>]*)([^\s'\"<>]*)")
_SECRET_PAIR = re.compile(r"(?i)\b([a-z0-9_]*(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key)[a-z0-9_]*)"
                          r"(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&'\"]+)")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[a-z0-9._~+/=-]{8,}")


def _redact_url(m: re.Match) -> str:
    scheme, userinfo, host, rest = m.group(1), m.group(2) or "", m.group(3), m.group(4)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***@"
    if scheme.lower() in ("http", "https", "ws", "wss"):  # a webhook's path or query is its secret
        rest = "/***" if rest.strip("/") else rest
    else:  # database URLs: the path is a database name; drop secret query parameters
        rest = _SECRET_PAIR.sub(lambda p: f"{p.group(1)}{p.group(2)}***", rest)
    return f"{scheme}://{userinfo}{host}{rest}"


_REQUEST_PATH = re.compile(r"(?i)(\burl:\s*)/\S+")  # urllib3: "Max retries exceeded with url: /services/..."


def _known_secrets() -> list[str]:
    """Secret values of the current settings (webhook path, database and reporting passwords), longest first."""
    from urllib.parse import urlparse

    try:
        settings = get_settings()
    except Exception:  # a bad setting must not stop an error from being recorded
        return []
    found = []
    if settings.alert_webhook_url:
        u = urlparse(settings.alert_webhook_url)
        found += [settings.alert_webhook_url, u.path + (f"?{u.query}" if u.query else ""), u.path,
                  u.path.lstrip("/"), u.query]
    if settings.database_url:
        found.append(urlparse(settings.database_url).password or "")
    found.append(settings.reporting_password or "")
    return sorted({f for f in found if len(f.strip("/")) >= 4}, key=len, reverse=True)


def redact_text(text: str) -> str:
    """`text` with credentials removed: the configured secrets (webhook URL path, passwords), URL passwords,
    http(s) URL paths and queries, password=/token=/secret=/api_key= values and bearer tokens become ***.
    Applied to every run-log message and to the CLI's one-line errors: the run log reaches
    gold.fact_pipeline_runs, which the reporting role reads."""
    text = _URL.sub(_redact_url, text)
    text = _REQUEST_PATH.sub(lambda m: f"{m.group(1)}/***", text)
    for secret in _known_secrets():
        text = text.replace(secret, "***")
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} ***", text)
