"""Sensors of the lifecycle."""
from __future__ import annotations

from airflow.sdk import BaseSensorOperator, PokeReturnValue


def latest_event_ds(context) -> str | None:
    """The newest ``ds`` carried in the extra of the assets that triggered this run."""
    found = []
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            value = (getattr(event, "extra", None) or {}).get("ds")
            if value:
                found.append(str(value))
    return max(found) if found else None


class DriftSensor(BaseSensorOperator):
    """Waits for a date's drift result in the monitoring table, then returns the retrain decision.

    The date is ``ds`` if given (manual runs), else the newest date carried by the triggering
    asset events. The decision (retrain or not, with its reason) is pushed to XCom.
    """

    template_fields = ("ds",)

    def __init__(self, *, use_case: str, ds: str = "", **kwargs):
        super().__init__(**kwargs)
        self.use_case = use_case
        self.ds = ds

    def poke(self, context) -> PokeReturnValue | bool:
        from pipelines import runtime

        date = (self.ds or "").strip() or latest_event_ds(context)
        if not date:
            raise ValueError("no date to evaluate: give the 'ds' param or trigger through the drift asset")
        decision = runtime.retrain_decision(self.use_case, date)
        if decision is None:
            self.log.info("no drift result for %s %s yet; waiting", self.use_case, date)
            return False
        self.log.info("%s %s: retrain=%s: %s", self.use_case, date, decision["retrain"], decision["reason"])
        return PokeReturnValue(is_done=True, xcom_value=decision)
