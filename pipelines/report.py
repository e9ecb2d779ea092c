"""A readable summary of a use case's state: champion history, drift, tables and where to look."""
from __future__ import annotations

from pipelines.core.config import settings
from pipelines.core.lake import Lake, list_partitions, read_table
from pipelines.models import compiled, tracking
from pipelines.monitoring.watch import DRIFT_SUMMARY, PERFORMANCE, RETRAIN_REQUESTS
from pipelines.release.decision import short_reason
from pipelines.release.model_card import card_folder


def champion_history(spec) -> list[dict]:
    """Every registered version with its trigger, promotion decision and reason, oldest first."""

    c = tracking.client()
    name = spec.model.registered_name
    try:
        versions = c.search_model_versions(f"name = '{name}'")
        aliases = {a: v for a, v in (c.get_registered_model(name).aliases or {}).items()}
    except Exception:
        return []
    rows = []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        tags = mv.tags or {}
        rows.append({
            "version": str(mv.version),
            "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
            "as_of": tags.get("as_of", ""),
            "trigger": tags.get("trigger", ""),
            "trigger_reason": tags.get("trigger_reason", ""),
            "decision": tags.get("promotion.decision", "not evaluated"),
            "reason": tags.get("promotion.reason", ""),
            "run_id": mv.run_id,
            "runtime": _runtime_text(tags),
            "gate": tags.get("gate.decision", ""),
            "gate_failing": tags.get("gate.failing", "none"),
            "gate_warnings": tags.get("gate.warnings", "none"),
            "review": (f"{tags['review.decision']} by {tags.get('review.by')}" if tags.get("review.decision") else ""),
            "card": str(card) if (card := card_folder(spec, mv.version) / "model_card.html").exists() else "",
            "drill": tags.get("drill", ""),
            "rollout": (f"{tags['rollout.decision']}" + (f": {tags['rollout.reason']}" if tags.get("rollout.reason")
                                                         else "")) if tags.get("rollout.decision") else "",
            "rolled_back": tags.get("champion.rolled_back", ""),      # this version was rolled back
            "rollback": (f"champion again since {tags['rollback.at']}: rolled back from v{tags.get('rollback.from')} "
                         f"by {tags.get('rollback.requested_by')}: {tags.get('rollback.reason')}")
            if tags.get("rollback.at") else "",
        })
    return rows


def _runtime_text(tags: dict) -> str:
    """What serves a version, as its tags say: the runtime, with where its bins are or why it is not compiled."""
    runtime = tags.get(compiled.RUNTIME_TAG, "")
    if not runtime:
        return "not recorded (registered before compiled inference)"
    detail = tags.get(compiled.REASON_TAG) or (f"quantile bins {tags[compiled.BINS_TAG]}" if tags.get(compiled.BINS_TAG) else "")
    return f"{runtime}: {detail}" if detail else runtime


def summarize(spec, lake: Lake | None = None) -> str:
    """The multi-line summary printed at the end of the demo (and by ``mlops summary``)."""

    cfg = settings()
    lake = lake or Lake(cfg.lake)
    name = spec.name
    lines = [f"== {name}: lifecycle summary =="]
    lines += _versions(spec)
    lines += _tables(spec, lake)
    lines += [
        "Where to look:",
        f"  inference table   {lake.inference(name)}  (Parquet, partitioned by ds)",
        f"  features          {lake.features(name)}",
        f"  monitoring tables {lake.root / 'monitoring' / name}  (drift_summary, drift_columns, performance)",
        f"  quarantine        {lake.root / 'quarantine' / name}",
        f"  drift reports     {cfg.reports / name / 'drift'}  (Evidently HTML, also in MLflow)",
        f"  model cards       {cfg.reports / name / 'model_cards'}/v<version>/model_card.html  (also in MLflow)",
        f"  gate results      {lake.monitoring(name, 'promotion_checks')}  (every check of every evaluation)",
        f"  MLflow            {cfg.mlflow_tracking_uri}",
    ]
    return "\n".join(lines)


def _versions(spec) -> list[str]:
    """Every version of the registered model: how it was trained, the gate, the decision, rollouts."""
    lines = []
    lines.append("Model versions (registry '%s'):" % spec.model.registered_name)
    history = champion_history(spec)
    if not history:
        lines.append("  none registered")
    for row in history:
        alias = f" [{', '.join(row['aliases'])}]" if row["aliases"] else ""
        if row["drill"]:
            lines.append(f"  v{row['version']}{alias}: a rollout drill ({row['drill']})")
        else:
            lines.append(f"  v{row['version']}{alias}: trained as of {row['as_of']} ({row['trigger']}: "
                         f"{row['trigger_reason']})")
            lines.append(f"      {row['decision']}: {short_reason(row['reason'])}")
        if row["gate"]:
            failing = "" if row["gate_failing"] == "none" else f", failing {row['gate_failing']}"
            warned = "" if row["gate_warnings"] == "none" else f", warnings {row['gate_warnings']}"
            review = f"; review: {row['review']}" if row["review"] else ""
            lines.append(f"      gate {row['gate']}{failing}{warned}{review}; model card {row['card']}")
        if row["rollout"]:
            lines.append(f"      rollout {short_reason(row['rollout'], 300)}")
        if row["rolled_back"]:
            lines.append(f"      rolled back {row['rolled_back']}")
        if row["rollback"]:
            lines.append(f"      {row['rollback']}")
    return lines


def _tables(spec, lake: Lake) -> list[str]:
    """Drift, retraining requests, live performance, partitions and the inference table, a line each."""
    name, lines = spec.name, []
    drift = read_table(lake.monitoring(name, DRIFT_SUMMARY))
    if len(drift):
        drifted = drift[drift["dataset_drift"].astype(bool)]["ds"].tolist()
        lines.append(f"Drift: {len(drift)} days monitored; drift over threshold on {len(drifted)} day(s)"
                     + (f": {drifted[0]} .. {drifted[-1]}" if drifted else ""))
    requests = list_partitions(lake.monitoring(name, RETRAIN_REQUESTS))
    lines.append(f"Drift-triggered retraining requests: {', '.join(requests) if requests else 'none'}")
    perf = read_table(lake.monitoring(name, PERFORMANCE))
    if len(perf):
        metric = spec.promotion.metric.value
        import pandas as pd

        source = perf["source"].fillna("batch") if "source" in perf else pd.Series("batch", index=perf.index)
        for kind, part in perf.groupby(source):
            by_version = part.groupby("model_version")[metric].mean().round(3).to_dict()
            lines.append(f"Live {metric} of {kind} scores by model version (mean over labelled days): {by_version}")
    counts = []
    for source in spec.sources:
        clean = list_partitions(lake.clean(name, source))
        quarantined = list_partitions(lake.quarantine(name, source))
        counts.append(f"{source}: {len(clean)} clean" + (f", {len(quarantined)} quarantined" if quarantined else ""))
    lines.append("Raw partitions: " + "; ".join(counts))
    inference = read_table(lake.inference(name), columns=["model_version"])
    if len(inference):
        per_version = inference.groupby("model_version").size().to_dict()
        lines.append(f"Inference table: {len(inference)} rows over {inference['ds'].nunique()} days; "
                     f"rows by model version {per_version}")
    return lines
