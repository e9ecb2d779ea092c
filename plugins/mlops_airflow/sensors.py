"""Sensors of the lifecycle."""
from __future__ import annotations

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from mlops_airflow.common import event_dates, run_day


def choose_decision(decisions: list[dict]) -> dict:
    """Of one run's decisions (oldest first), the one to act on: the newest that asks for
    retraining, else the newest. Every decision is kept under ``evaluated``."""
    wanted = [d for d in decisions if d["retrain"]] or decisions
    return {**wanted[-1], "evaluated": [{k: d[k] for k in ("ds", "retrain", "reason")} for d in decisions]}


class DriftSensor(BaseSensorOperator):
    """Waits for drift results in the monitoring table, then returns the retrain decision.

    The dates are ``ds`` if given (manual runs), else every date carried by the triggering
    asset events: each is evaluated once. The decision acted on (retrain or not, with its
    reason, see :func:`choose_decision`) is pushed to XCom with all the evaluated ones.
    """

    template_fields = ("ds",)

    def __init__(self, *, use_case: str, ds: str = "", **kwargs):
        super().__init__(**kwargs)
        self.use_case = use_case
        self.ds = ds

    def poke(self, context) -> PokeReturnValue | bool:
        from pipelines import runtime
        given = (self.ds or "").strip()
        dates = [given] if given else event_dates(context)
        if not dates:
            raise ValueError("no date to evaluate: give the 'ds' param or trigger through the drift asset")
        decisions = []
        for date in dates:
            decision = runtime.retrain_decision(self.use_case, date)
            if decision is None:
                self.log.info("no drift result for %s %s yet; waiting", self.use_case, date)
                return False
            self.log.info("%s %s: retrain=%s: %s", self.use_case, date, decision["retrain"], decision["reason"])
            decisions.append(decision)
        return PokeReturnValue(is_done=True, xcom_value=choose_decision(decisions))


class LookBackSensor(BaseSensorOperator):
    """Waits until every day of a date's feature look-back window has a validated partition.

    A day still being validated (delivered, neither clean nor quarantined yet: for example the
    previous day of a backfill running beside this one) is waited for. A day that was rejected
    or never delivered cannot arrive by waiting: the sensor fails at once, naming the days.
    """

    template_fields = ("ds",)

    def __init__(self, *, use_case: str, ds: str = "", **kwargs):
        super().__init__(**kwargs)
        self.use_case = use_case
        self.ds = ds   # empty: the run's date (see mlops_airflow.common.run_day)

    def poke(self, context) -> bool:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines import runtime
        from pipelines.features.point_in_time import LookBackIncomplete

        try:
            runtime.check_look_back(self.use_case, (self.ds or "").strip() or run_day(context))
        except LookBackIncomplete as exc:
            if any(gap.settled for gap in exc.gaps):
                raise AirflowFailException(str(exc)) from None
            self.log.info("waiting for validation of %s", ", ".join(map(str, exc.gaps)))
            return False
        return True
