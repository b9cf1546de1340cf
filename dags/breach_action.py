"""Acknowledge a limit breach, or raise its limit for a while, through Airflow's human-in-the-loop approval.

Trigger this DAG with the breach (portfolio, limit type, the day it began: the Firm page's "Since"), the action, a
reason and the last day it holds. `approve_action` (an ApprovalOperator) then waits under **Required Actions** for
a user to Approve or Reject; on Approve, `record_action` records the action under the name of the user who
approved it (Airflow's own record of the response, never a typed name), through the same function as the cockpit's
form (etl.report.breach_actions.act): the action log, raw.breach_actions and gold.fact_breach_actions. A Reject
skips it. See docs/cockpit.md, "Acting on a breach".
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, task
from pipeline_common import pipeline_dag

from etl.orchestration.spec import LIMIT_TYPES  # every limit type a breach can have, lvar too

PARAMS = {
    "portfolio_id": Param("P001", type="string", minLength=1, title="Portfolio",
                          description="The portfolio in breach (gold.dim_portfolio)."),
    "limit_type": Param("var", type="string", enum=list(LIMIT_TYPES), title="Limit",
                        description="Which of the portfolio's limits is breached."),
    "breach_began": Param("2026-01-01", type="string", format="date", title="Breach began",
                          description="The day the breach began (the Firm page's Since column), YYYY-MM-DD."),
    "action": Param("acknowledge", type="string", enum=["acknowledge", "raise_limit"], title="Action",
                    description="acknowledge: known, alerts held until it worsens; raise_limit: a temporary limit."),
    "reason": Param("", type="string", minLength=1, maxLength=500, title="Reason",
                    description="Why: shown beside the breach and kept in gold.fact_breach_actions."),
    "valid_until": Param("2026-01-08", type="string", format="date", title="Valid until",
                         description="Last day the action holds (at most 90 days ahead), YYYY-MM-DD."),
    "new_limit_value": Param(None, type=["null", "number"], title="New limit",
                             description="raise_limit only: the temporary limit, above the current one."),
}


@pipeline_dag("breach_action", None, tags=["risk", "limits", "hitl"], doc_md=__doc__, params=PARAMS)
def breach_action():
    approve_action = ApprovalOperator(
        task_id="approve_action",
        subject="{{ params.action }} the {{ params.limit_type }} breach of {{ params.portfolio_id }} "
                "(since {{ params.breach_began }})",
        body="**Reason:** {{ params.reason }}\n\n**Until:** {{ params.valid_until }}"
             "{% if params.new_limit_value %}\n\n**New limit:** {{ params.new_limit_value }}{% endif %}",
        response_timeout=timedelta(days=7),
    )

    @task
    def record_action(params=None, ti=None) -> str:
        import uuid
        from datetime import date

        from etl.report import breach_actions

        decision = ti.xcom_pull(task_ids="approve_action")
        act, note = breach_actions.act(
            params["portfolio_id"], params["limit_type"], date.fromisoformat(params["breach_began"]),
            params["action"], params["reason"], decision["responded_by_user"]["name"],
            date.fromisoformat(params["valid_until"]), params.get("new_limit_value"),
            # one approval, one action: a retry of this task (its worker lost after the record) finds it logged
            action_id=uuid.uuid5(uuid.NAMESPACE_URL, f"airflow:{ti.dag_id}/{ti.run_id}").hex)
        return note or f"breach action {act.action_id} by {act.by_user} recorded in gold.fact_breach_actions"

    approve_action >> record_action()


breach_action()
