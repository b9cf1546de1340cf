"""Actions on limit breaches: acknowledge one, or raise its limit for a while, with a reason, by a named user.

A breach is known by (portfolio_id, limit_type, breach_began): `breach_began` is the first day of its unbroken run of
daily breaches (etl.report.cockpit.breaches, over all the history gold holds). `act` finds that breach in gold and
acts on it under a user Airflow vouches for: the cockpit's `POST /risk/breach_action` passes the user its auth manager
validated (never a name from the form), the `breach_action` DAG the user who approved under Required Actions. Then
(`take`) the action is checked (`make`) and:

1. one Parquet file is appended to the action log `{data}/actions/breach_actions/date=D/<action_id>.parquet` (the
   durable record, written with the platform's Store like the run log: nothing is ever rewritten);
2. `publish` loads it into raw.breach_actions and builds gold.fact_breach_actions (write-audit-publish of that model
   only), so the page shows "acknowledged by X: reason" at once. If that fails (another load holds the warehouse),
   the action stays in the log and the next `load` publishes it.

An action holds until its `valid_until` day (inclusive) or until the breach ends (a new breach has a new
`breach_began`); the cockpit shows the latest one in force (etl.report.cockpit.active_actions). Alerts
(etl.report.alerts) skip an acknowledged breach until its utilisation rises ALERT_ACK_STEP
above its level when acknowledged, and a breach under its raised limit.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa

from etl.db import reporting_url
from etl.errors import DataNotFoundError, PipelineError, ValidationError
from etl.report import cockpit
from etl.report.gold import GoldReader
from etl.settings import Settings, get_settings
from etl.storage import get_store, partition_path
from etl.warehouse.schema import arrow_schema

log = logging.getLogger(__name__)

ACTIONS = ("acknowledge", "raise_limit")
LOG_DIR = "actions/breach_actions"
TABLE = "fact_breach_actions"
MAX_DAYS = 90        # an action lapses after at most this many days: a breach is never silenced for good
MAX_REASON = 500


@dataclass(frozen=True)
class BreachAction:
    action_id: str
    portfolio_id: str
    limit_type: str
    breach_began: date
    action: str
    by_user: str
    reason: str
    acted_at: datetime
    valid_until: date
    utilisation_at_action: float | None
    new_limit_value: float | None = None


def make(breach: dict, action: str, reason: str, by_user: str, valid_until: date,
         new_limit_value: float | None = None, today: date | None = None, action_id: str | None = None) -> BreachAction:
    """Validate an action on `breach` (a dict of etl.report.cockpit.breaches: the breach as gold has it today);
    a ValidationError says which field is wrong and why."""
    today = today or datetime.now(UTC).date()
    reason = (reason or "").strip()
    if action not in ACTIONS:
        raise ValidationError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if not by_user:
        raise ValidationError("no user: an action needs the name of the logged-in Airflow user")
    if not reason:
        raise ValidationError("reason: say why (it is shown beside the breach and kept in gold)")
    if len(reason) > MAX_REASON:
        raise ValidationError(f"reason: at most {MAX_REASON} characters, got {len(reason)}")
    if not today <= valid_until <= today + timedelta(days=MAX_DAYS):
        raise ValidationError(f"valid_until {valid_until}: must be between {today} and {today + timedelta(days=MAX_DAYS)}")
    if action == "raise_limit":
        limit = breach.get("limit_value")
        if new_limit_value is None or limit is None or not new_limit_value > limit:
            raise ValidationError(f"new_limit_value {new_limit_value}: a raised limit must be above the current "
                                  f"limit {limit}")
    elif new_limit_value is not None:
        raise ValidationError("new_limit_value: only a raise_limit action sets a limit")
    return BreachAction(action_id=action_id or uuid.uuid4().hex, portfolio_id=str(breach["portfolio_id"]),
                        limit_type=str(breach["limit_type"]), breach_began=date.fromisoformat(str(breach["since"])),
                        action=action, by_user=by_user, reason=reason, acted_at=datetime.now(UTC),
                        valid_until=valid_until, utilisation_at_action=breach.get("utilisation"),
                        new_limit_value=new_limit_value)


def record(act: BreachAction, settings: Settings | None = None) -> str:
    """Append the action to the log (the durable record); returns the file written."""
    row = asdict(act)
    table = pa.Table.from_pylist([row], schema=arrow_schema("breach_actions", list(row)))
    rel = partition_path(LOG_DIR, date=act.acted_at.date().isoformat()) + f"/{act.action_id}.parquet"
    path = get_store(settings).write_parquet(rel, table)
    log.info("breach action %s: %s %s %s since %s by %s until %s: %s", act.action_id, act.action, act.portfolio_id,
             act.limit_type, act.breach_began, act.by_user, act.valid_until, act.reason)
    return path


def recorded(action_id: str, settings: Settings | None = None) -> BreachAction | None:
    """The action of that id in the log, or None."""
    store = get_store(settings)
    files = store.list_files(LOG_DIR, suffix=f"/{action_id}.parquet")
    return BreachAction(**store.read_parquet(files[0]).to_pylist()[0]) if files else None


def publish(settings: Settings | None = None) -> None:
    """raw.breach_actions from the log, then gold.fact_breach_actions (write-audit-publish of that model alone)."""
    from etl import db
    from etl.warehouse import run_dbt, setup
    from etl.warehouse.loader import load_raw

    settings = settings or get_settings()
    setup(settings)
    with db.connect(settings) as conn:
        load_raw(conn, get_store(settings), settings, only={"breach_actions"})
    run_dbt("build", settings=settings, select=f"stg_ops__breach_actions {TABLE}",
            extra_args=["--indirect-selection", "cautious"])


def take(breach: dict, action: str, reason: str, by_user: str, valid_until: date,
         new_limit_value: float | None = None, settings: Settings | None = None,
         action_id: str | None = None) -> tuple[BreachAction, str | None]:
    """`make`, `record`, `publish`: returns the action and, when gold could not be built now, why (the action is
    in the log and reaches gold with the next load)."""
    act = make(breach, action, reason, by_user, valid_until, new_limit_value, action_id=action_id)
    record(act, settings)
    return act, _published(act, settings)


def _published(act: BreachAction, settings: Settings | None) -> str | None:
    """`publish`; None, or why gold does not show the (logged) action yet."""
    try:
        publish(settings)
    except PipelineError as exc:
        log.warning("breach action %s is logged; gold shows it after the next load: %s", act.action_id, exc)
        return f"recorded; gold shows it after the next load ({exc})"
    return None


def act(portfolio_id: str, limit_type: str, breach_began: date, action: str, reason: str, by_user: str,
        valid_until: date, new_limit_value: float | None = None, as_of: date | None = None,
        settings: Settings | None = None, action_id: str | None = None) -> tuple[BreachAction, str | None]:
    """Act on the end-of-day breach gold shows on `as_of` (default: the latest day) for this portfolio and limit type
    that began on `breach_began` (DataNotFoundError if there is none), as `take` does. The cockpit's POST and the
    `breach_action` DAG (after its approval) both come here.

    `action_id`: the caller's id for this one action (the DAG: its run's), so that a retry of a task that already
    recorded it (its worker lost after the record) publishes that action again instead of recording a second one."""
    settings = settings or get_settings()
    if action_id and (done := recorded(action_id, settings)) is not None:
        return done, _published(done, settings)
    with GoldReader(reporting_url(settings)) as reader:
        as_of = as_of or reader.latest_as_of()
        found, _ = cockpit.breaches(reader, as_of)
    breach = next((b for b in found if b["scope"] == "eod" and b["portfolio_id"] == portfolio_id
                   and b["limit_type"] == limit_type and b["since"] == breach_began.isoformat()), None)
    if breach is None:
        raise DataNotFoundError(f"no {limit_type} breach of {portfolio_id} that began on {breach_began} in "
                                f"gold.fact_limit_breaches on {as_of}")
    return take(breach, action, reason, by_user, valid_until, new_limit_value, settings, action_id)


def is_quiet(breach: dict, step: float) -> bool:
    """Whether an alert for `breach` (with its `action` from `active`) is held back: acknowledged and not worse by
    `step` of utilisation since, or within its raised limit."""
    act, util = breach.get("action"), breach.get("utilisation")
    if not act or util is None:
        return False  # an uncomputable metric always alerts
    if act["action"] == "raise_limit":
        return breach.get("value") is not None and breach["value"] <= act["new_limit_value"]
    base = act.get("utilisation_at_action")
    return base is not None and util < base + step
