"""The risk cockpit's FastAPI app, mounted by the Airflow API server at `/risk` (see risk_cockpit_plugin.py).

Routes (every one behind Airflow's own authentication: see `_auth_dependency`):
  /risk/                         the Firm page          /risk/api/firm
  /risk/portfolio/{id}           a portfolio            /risk/api/portfolio/{id}
  /risk/market                   market                 /risk/api/market
  /risk/pipeline                 pipeline health        /risk/api/pipeline
  /risk/api/summary              the contract JSON (../shared/CONTRACT.md)
  POST /risk/breach_action       acknowledge a breach or raise its limit, as the logged-in user
  /risk/report[/{as_of}]         the HTML report of the day (latest by default)
  /risk/run/{dag_id}/{run_id}    the report a DAG run wrote (the per-run link in the Airflow UI)
  /risk/docs                     the dbt docs site (dbt docs generate --static)
  /risk/static/...               vendored Chart.js and the page script
Pages and JSON take `?as_of=YYYY-MM-DD` (default: the latest day in gold.fact_risk_metrics).
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from risk_cockpit import pages

STATIC = Path(__file__).parent / "static"
AsOf = Annotated[date | None, Query(description="as-of day, YYYY-MM-DD (default: latest)")]


def _auth_dependency():
    """Refuse requests without a valid Airflow token, exactly as Airflow's own API does.

    `airflow.api_fastapi.core_api.security.get_user` reads the `Authorization: Bearer` header or the UI's
    `_token` cookie and validates the JWT with the configured auth manager (signature, expiry, revocation):
    401 without a token or with an expired one, 403 for an invalid one. `requires_access_view(WEBSITE)` then
    asks the auth manager whether this user may see the UI at all (403 if not). FastAPI apps mounted by
    plugins get none of this on their own.
    """
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    return Depends(requires_access_view(AccessView.WEBSITE))


def _user_dependency():
    """The user Airflow's auth manager validated for this request (the same `get_user` as above, cached per
    request): an action is recorded under this name, never under one sent in the form."""
    from airflow.api_fastapi.core_api.security import get_user

    return Depends(get_user)


app = FastAPI(title="Risk cockpit", docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[_auth_dependency()])


@app.get("/static/{name}")
def static(name: str) -> FileResponse:
    """Chart.js and the page script (a route, not StaticFiles: a mount would skip the login check)."""
    path = STATIC / name
    if name not in {p.name for p in STATIC.iterdir()}:
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    return FileResponse(path)


@app.exception_handler(HTTPException)
async def _refused(request: Request, exc: HTTPException) -> Response:
    """JSON for API calls; for a page, the same status with a link to Airflow's login."""
    if exc.status_code in (401, 403) and "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(pages.refused(exc.status_code, str(exc.detail)), status_code=exc.status_code)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", ()))
    return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, status_code=400)


def _reader():
    from etl.db import reporting_url
    from etl.report.gold import GoldReader

    return GoldReader(reporting_url())


def _data(build, *args):
    """Run one page builder on a fresh read-only session; missing data is a 404 with the reason."""
    from etl.errors import DataNotFoundError

    try:
        with _reader() as reader:
            return build(reader, *args)
    except DataNotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


# ---- JSON ------------------------------------------------------------------------------------------------------
@app.get("/api/summary")
def api_summary(as_of: AsOf = None) -> dict:
    from etl.report import cockpit

    return _data(cockpit.summary, as_of)


@app.get("/api/firm")
def api_firm(as_of: AsOf = None) -> dict:
    from etl.report import cockpit

    return _data(cockpit.firm, as_of)


@app.get("/api/portfolio/{portfolio_id}")
def api_portfolio(portfolio_id: str, as_of: AsOf = None) -> dict:
    from etl.report import cockpit

    data = _data(lambda r, a: cockpit.portfolio(r, portfolio_id, a), as_of)
    if data is None:
        raise HTTPException(status_code=404, detail=f"portfolio {portfolio_id!r} is not in gold.dim_portfolio")
    return data


@app.get("/api/market")
def api_market(as_of: AsOf = None) -> dict:
    from etl.report import cockpit

    return _data(cockpit.market, as_of)


@app.get("/api/pipeline")
def api_pipeline() -> dict:
    from etl.report import cockpit

    return {**_data(cockpit.pipeline), "airflow_runs": _airflow_runs()}


def _airflow_runs() -> list[dict]:
    """DAG runs per DAG and state, as Airflow counts them (its metadata DB, which this API server serves). Gold's
    run log only has the runs that reached their load task: a run stopped half-way, or still going, shows here."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        rows = session.execute(select(DagRun.dag_id, DagRun.state, func.count())
                               .group_by(DagRun.dag_id, DagRun.state)).all()
    per_dag: dict[str, dict] = {}
    for dag_id, state, n in rows:
        counts = per_dag.setdefault(dag_id, {"dag_id": dag_id, **dict.fromkeys(pages.RUN_STATES, 0)})
        counts[str(state)] = counts.get(str(state), 0) + n
    return [per_dag[d] for d in sorted(per_dag)]


# ---- pages -----------------------------------------------------------------------------------------------------
@app.get("/", response_class=HTMLResponse)
def firm_page(as_of: AsOf = None, page: Annotated[int, Query(ge=1)] = 1) -> str:
    return pages.firm(api_firm(as_of), page)


@app.get("/portfolio", response_class=HTMLResponse)
def portfolio_index(as_of: AsOf = None) -> Response:
    data = api_firm(as_of)
    first = data["portfolios"][0]["portfolio_id"] if data["portfolios"] else None
    if first is None:
        raise HTTPException(status_code=404, detail="gold.dim_portfolio has no portfolios")
    return RedirectResponse(f"portfolio/{first}?as_of={data['as_of']}", status_code=303)


@app.get("/portfolio/{portfolio_id}", response_class=HTMLResponse)
def portfolio_page(portfolio_id: str, as_of: AsOf = None) -> str:
    data = api_portfolio(portfolio_id, as_of)
    ids = _data(lambda r: r.query("select portfolio_id from gold.dim_portfolio order by 1")["portfolio_id"].tolist())
    return pages.portfolio(data, ids)


@app.get("/market", response_class=HTMLResponse)
def market_page(as_of: AsOf = None) -> str:
    return pages.market(api_market(as_of))


@app.get("/pipeline", response_class=HTMLResponse)
def pipeline_page() -> str:
    return pages.pipeline(api_pipeline())


# ---- actions on breaches -------------------------------------------------------------------------------------
@app.post("/breach_action")
def breach_action(request: Request, portfolio_id: Annotated[str, Form()], limit_type: Annotated[str, Form()],
                  breach_began: Annotated[date, Form()], action: Annotated[str, Form()],
                  reason: Annotated[str, Form()], valid_until: Annotated[date, Form()],
                  new_limit_value: Annotated[str, Form()] = "", as_of: Annotated[date | None, Form()] = None,
                  user=_user_dependency()) -> Response:
    """Acknowledge a breach of the as-of day, or raise its limit until a day (etl.report.breach_actions), as the
    logged-in user. A form post from the Firm page is answered with a redirect back to it; an API call with JSON."""
    from etl.errors import DataNotFoundError, ValidationError
    from etl.report import breach_actions, cockpit

    origin = request.headers.get("origin")
    if origin and origin.split("://", 1)[-1] != request.headers.get("host"):  # a form posted from another site
        raise HTTPException(status_code=403, detail=f"cross-site action refused (origin {origin})")
    try:
        try:
            limit = float(new_limit_value) if new_limit_value.strip() else None
        except ValueError:
            raise ValidationError(f"new_limit_value {new_limit_value!r} is not a number") from None
        act, note = breach_actions.act(portfolio_id, limit_type, breach_began, action, reason, user.get_name(),
                                       valid_until, limit, as_of)
    except ValidationError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    except DataNotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    if "text/html" in request.headers.get("accept", ""):
        back = f"./?as_of={as_of.isoformat()}" if as_of else "./"
        return RedirectResponse(f"{back}#breaches", status_code=303)
    return JSONResponse({"action": cockpit.jsonable(act.__dict__), "note": note}, status_code=201)


# ---- the HTML report and the dbt docs --------------------------------------------------------------------------
def _report_file(as_of: date | None) -> Path:
    from etl.report import latest_report, reports_dir

    root = reports_dir()
    if as_of is None:  # the newest complete report (an incomplete one only when there is no complete one)
        latest = latest_report()
        if latest is None:
            raise HTTPException(status_code=404, detail="no HTML report yet: run `python -m etl report`")
        return latest
    path = root / as_of.isoformat() / "report.html"
    if not path.exists():
        raise HTTPException(status_code=404, detail=f"no HTML report for {as_of}: run `python -m etl report "
                                                    f"--as-of {as_of}`")  # no server path in a reply
    return path


@app.get("/report")
def report_latest() -> Response:
    return RedirectResponse(f"report/{_report_file(None).parent.name}/report.html", status_code=303)


@app.get("/report/{as_of}/{name:path}")
def report_file(as_of: date, name: str) -> FileResponse:
    """The report of a day and the files beside it (portfolio pages, CSVs): only inside that day's folder."""
    folder = _report_file(as_of).parent.resolve()
    path = (folder / (name or "report.html")).resolve() if "\0" not in name else folder  # NUL: no such file
    if folder not in path.parents or not path.is_file():
        raise HTTPException(status_code=404, detail=f"{name!r} is not a file of the {as_of} report")
    return FileResponse(path)


@app.get("/report/{as_of}")
def report_day(as_of: date) -> Response:
    _report_file(as_of)
    return RedirectResponse(f"{as_of}/report.html", status_code=303)


@app.get("/run/{dag_id}/{run_id}")
def run_report(dag_id: str, run_id: str) -> Response:
    """The report written by this DAG run (its export_report task's message in gold, or the report's own status
    file when gold has not caught up with the run yet), else a page saying why not."""
    from etl.report import cockpit, report_of_run

    path = _data(lambda r: cockpit.report_for_run(r, run_id)) or report_of_run(run_id)
    day = Path(path).parent.name if path else None
    if day and re.fullmatch(r"\d{4}-\d{2}-\d{2}", day) and Path(path).exists():
        return RedirectResponse(f"../../report/{day}/report.html", status_code=303)
    return HTMLResponse(pages.no_run_report(dag_id, run_id), status_code=404)


@app.get("/docs")
def dbt_docs() -> Response:
    """The dbt docs site: `dbt docs generate --static` writes one self-contained HTML file."""
    from etl.settings import get_settings
    from etl.warehouse.dbt import target_dir

    static = target_dir(get_settings()) / "static_index.html"
    if not static.exists():
        return HTMLResponse(pages.no_docs(static), status_code=404)
    return FileResponse(static, media_type="text/html")
