"""Schemas, roles and grants of the warehouse (idempotent; run by `setup()` before every load).

- `pipeline_writer` (NOLOGIN group role): usage+create on raw/staging/gold and full DML on raw. Production login
  users of the pipeline (Airflow's connection) are made members of it; the embedded server's `postgres` user
  already owns everything.
- `reporting` (LOGIN): connect + usage on `gold` + SELECT on every gold table, now and in future (default
  privileges, and dbt's `+grants` on the marts). No usage on raw or staging, no write anywhere, sessions read-only.
  Its password comes from the settings (None: no password, e.g. the embedded server trusts its local socket).
"""

from __future__ import annotations

import logging

from psycopg2 import sql

from etl.db import REPORTING_ROLE

log = logging.getLogger(__name__)

READER = REPORTING_ROLE
WRITER = "pipeline_writer"
SCHEMAS = ("raw", "staging", "gold")


def create_role(cur, role: str, options: str) -> None:
    """Create `role` with `options` unless it exists. Roles are cluster-wide: several databases (tests) may race
    to create them, which is fine."""
    cur.execute(f"""
        do $$ begin
          if not exists (select from pg_roles where rolname = '{role}') then
            create role {role} {options};
          end if;
        exception when duplicate_object or unique_violation then null;
        end $$""")


ADMIN_SQL = (f"create role {READER} login; create role {WRITER} nologin; "
             f"alter role {READER} set default_transaction_read_only = on; alter role {READER} set search_path = gold")


def ensure_roles(conn, reporting_password: str | None = None) -> set[str]:
    """Create the roles when the current user may (superuser or CREATEROLE); return the roles that exist.

    Without that privilege missing roles are reported with the SQL an administrator should run, and the load goes
    on without them (grants to them are skipped).
    """
    with conn.cursor() as cur:
        cur.execute("select current_user, rolsuper or rolcreaterole from pg_roles where rolname = current_user")
        user, may_create = cur.fetchone()
        if may_create:
            create_role(cur, WRITER, "nologin")
            create_role(cur, READER, "login")
        cur.execute("select rolname, rolconfig from pg_roles where rolname in (%s, %s)", (READER, WRITER))
        existing = {name: set(config or []) for name, config in cur.fetchall()}
        missing = {READER, WRITER} - set(existing)
        if missing:
            log.warning("roles %s do not exist and %s may not create them: ask an administrator to run `%s` "
                        "(or grant it CREATEROLE); the reporting role cannot read gold until then",
                        sorted(missing), user, ADMIN_SQL)
        if may_create and READER in existing:
            for setting in ("default_transaction_read_only=on", "search_path=gold"):
                if setting not in existing[READER]:  # alter only when needed: no concurrent updates across DBs
                    name, value = setting.split("=")
                    cur.execute(f"alter role {READER} set {name} = {value}")
            if reporting_password:
                cur.execute(sql.SQL("alter role {} login password %s").format(sql.Identifier(READER)),
                            (reporting_password,))
        return set(existing)


def grant(conn, roles: set[str] | None = None) -> None:
    """Schemas, and the privileges of `roles` (default: both) in the current database."""
    roles = {READER, WRITER} if roles is None else roles
    with conn.cursor() as cur:
        for schema in SCHEMAS:
            cur.execute(f"create schema if not exists {schema}")
        cur.execute("select current_database()")
        database = sql.Identifier(cur.fetchone()[0])
        if READER in roles:  # gold only, read only
            cur.execute(sql.SQL("grant connect on database {} to {}").format(database, sql.Identifier(READER)))
            cur.execute(f"revoke all on schema raw, staging from {READER}")
            cur.execute(f"revoke all on all tables in schema raw, staging from {READER}")
            cur.execute(f"grant usage on schema gold to {READER}")
            cur.execute(f"grant select on all tables in schema gold to {READER}")
            cur.execute(f"alter default privileges in schema gold grant select on tables to {READER}")
        if WRITER in roles:  # builds staging/gold (dbt) and loads raw
            cur.execute(sql.SQL("grant connect on database {} to {}").format(database, sql.Identifier(WRITER)))
            cur.execute(f"grant usage, create on schema raw, staging, gold to {WRITER}")
            cur.execute(f"grant select, insert, update, delete, truncate on all tables in schema raw to {WRITER}")
            cur.execute(f"alter default privileges in schema raw grant select, insert, update, delete, truncate "
                        f"on tables to {WRITER}")
