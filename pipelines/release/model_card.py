"""Model cards: one page per registered version that a risk reviewer can read and sign.

A card is written when the gate has evaluated a version and again when its promotion is decided,
as Markdown and as a self-contained HTML page (images inlined), under
``<reports>/<use case>/model_cards/v<version>/`` and in the version's MLflow run under
``model_card/``. The version's description in the registry links to it.

It gathers what exists elsewhere: intended use and owner (spec), training window, data digest,
Airflow run and code version (run tags and params), parameters and holdout metrics (run), every
gate check with its result and the slice, fairness, calibration and latency tables (the
evaluation), SHAP importances overall and per slice (``explanations/importance.json``), and the
decision with its reason and review.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import math
import tempfile
from pathlib import Path

from pipelines.core.config import settings
from pipelines.core.spec import TaskType
from pipelines.models import tracking
from pipelines.release.decision import Evaluation
from pipelines.training.explanations import IMPORTANCE_ARTIFACT

log = logging.getLogger(__name__)

CARD_ARTIFACTS = "model_card"
IMAGES = {"shap_bar.png": "explanations/shap_bar.png", "shap_beeswarm.png": "explanations/shap_beeswarm.png",
          "calibration.png": "gate/calibration.png"}


def card_folder(spec, version: str) -> Path:
    return settings().reports / spec.name / "model_cards" / f"v{version}"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    if not rows:
        return ["(none)", ""]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows), ""]


def decision_line(evaluation: Evaluation, decision: tuple | None) -> str:
    if decision is not None:
        outcome, reason, _ = decision
        return f"**Decision: {outcome}.** {reason}"
    state = "passed the gate" if evaluation.eligible else "failed the gate"
    return f"**Evaluated: {state}** (no promotion decided yet). {evaluation.reason}"


def render_markdown(spec, ref, run, evaluation: Evaluation, decision: tuple | None, importance: dict | None,
                    images: set[str]) -> str:
    """The card as Markdown (images referenced by file name, beside the card)."""
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    metric = evaluation.metric
    champion = evaluation.champion
    lines = [f"# Model card: {ref.name} v{ref.version}", "", decision_line(evaluation, decision), ""]
    lines += ["## Overview", ""] + _table(["", ""], [
        ["Use case", spec.name], ["Owner", spec.owner or "(not set in the spec)"],
        ["Intended use", spec.intended_use or spec.description or "(not set in the spec)"],
        ["Task", spec.model.task.value], ["Estimator", spec.model.estimator],
        ["Promotion metric", f"{metric} ({'higher' if spec.promotion.metric.higher_is_better else 'lower'} is better)"],
    ])
    lines += ["## Provenance", ""] + _table(["", ""], [
        ["Trained as of", tags.get("as_of", "")], ["Trigger", f"{tags.get('trigger', '')}: {tags.get('trigger_reason', '')}"],
        ["Training label dates", params.get("fit_label_dates", "")],
        ["Holdout label dates", params.get("holdout_label_dates", "")],
        ["Training rows", params.get("train_rows", "")], ["Training data digest", tags.get("training_data_digest", "")],
        ["Airflow run", tags.get("airflow_run_id") or "(not run by Airflow)"],
        ["Code version", tags.get("code_version", "unknown")], ["MLflow run", ref.run_id],
        ["Model URI", ref.uri],
    ])
    shown = {k: v for k, v in params.items() if k.startswith("best.") or k in {"search_method", "threshold", "split", "snapshots"}}
    lines += ["## Parameters", ""] + _table(["parameter", "value"], [[k, v] for k, v in sorted(shown.items())])
    holdout = {k.removeprefix("holdout_"): v for k, v in metrics.items() if k.startswith("holdout_")}
    lines += ["## Holdout metrics", "", f"Holdout: {evaluation.holdout}; champion compared: "
              + (f"v{champion['version']}" if champion else "none (first model)"), ""]
    lines += _table(["metric", "challenger"], [[k, v] for k, v in sorted(holdout.items())])
    lines += [f"On the gate's holdout: {metric} challenger {_cell(evaluation.challenger_value)}, champion "
              f"{_cell(evaluation.champion_value) or '(none)'}.", ""]
    lines += ["## Promotion gate", ""] + _table(["check", "kind", "mode", "result", "reason"], [
        [c["name"], c["kind"], c["mode"], "passed" if c["passed"] else ("FAILED" if c["mode"] == "enforce" else "warning"),
         c["reason"]] for c in evaluation.checks])
    lines += _gate_detail(evaluation.results, images)
    lines += _explanations(importance, images, tags)
    if decision is not None and decision[2] is not None:
        review = decision[2]
        lines += ["## Review", ""] + _table(["", ""], [
            ["Decision", "approved" if review.approved else "rejected"], ["Reviewer", review.by or "nobody (timed out)"],
            ["At", review.at or ""], ["Comment", review.comment]])
    return "\n".join(lines)


GATE_DETAIL = (   # a check kind's table: title, header, and each result's cells
    ("slices", "Slices", ["check", "slice", "rows", "challenger", "champion", "max regression", "status"],
     ("check", "subject", "rows", "value", "champion_value", "threshold", "status")),
    ("fairness", "Fairness", ["check", "group", "rows", "value", "threshold", "status"],
     ("check", "subject", "rows", "value", "threshold", "status")),
    ("calibration", "Calibration", ["check", "measure", "rows", "challenger", "champion", "ceiling", "status"],
     ("check", "subject", "rows", "value", "champion_value", "threshold", "status")),
    ("latency", "Latency and size", ["check", "measure", "value", "budget", "status"],
     ("check", "subject", "value", "threshold", "status")),
)


def _gate_detail(results: list[dict], images: set[str]) -> list[str]:
    """A table per check kind with results (slices, fairness, calibration with its plot, latency)."""
    lines = []
    for kind, title, header, cells in GATE_DETAIL:
        rows = [r for r in results if r["kind"] == kind]
        if not rows:
            continue
        lines += [f"### {title}", ""] + _table(header, [[r[c] for c in cells] for r in rows])
        if kind == "calibration" and "calibration.png" in images:
            lines += ["![calibration](calibration.png)", ""]
    if "calibration.png" in images and not any(r["kind"] == "calibration" for r in results):
        lines += ["### Calibration", "", "![calibration](calibration.png)", ""]
    return lines


def _explanations(importance: dict | None, images: set[str], tags: dict) -> list[str]:
    """The SHAP section: global importance, top features per slice, the plots; or why there is none."""
    lines = ["## Explanations (SHAP)", ""]
    if not importance:
        return lines + [f"(none: {tags.get('explanations', 'no explanations were logged for this run')})", ""]
    lines += [f"Mean |SHAP| per feature over {importance['rows']} holdout rows ({importance['explainer']} "
              f"explainer); for a multiclass model, toward the predicted class.", ""]
    lines += _table(["feature", "mean abs SHAP"], [[k, v] for k, v in list(importance["global"].items())[:10]])
    if importance.get("slices"):
        lines += ["Top features per slice:", ""]
        lines += _table(["slice", "top features"], [[s, ", ".join(top)] for s, top in importance["slices"].items()])
    lines += [f"![SHAP importance]({name})" for name in ("shap_bar.png", "shap_beeswarm.png") if name in images]
    return lines + [""]


# No script runs on a card: everything on it (the spec's owner, a reason, a category value from
# the data) is text, and the page says so to the browser as well.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }}
h1 {{ border-bottom: 2px solid #444; }}
</style></head><body>
{body}
</body></html>
"""


def render_html(markdown: str, images: dict[str, bytes], title: str) -> str:
    """A self-contained page: the Markdown rendered with raw HTML off (a ``<script>`` in any text
    shows as text), its images inlined, and a Content-Security-Policy that allows no script."""

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    for name, data in images.items():
        body = body.replace(f'src="{name}"', f'src="data:image/png;base64,{base64.b64encode(data).decode()}"')
    return HTML_PAGE.format(title=html.escape(title), body=body, csp=CONTENT_SECURITY_POLICY)


def publish(spec, ref, evaluation: Evaluation, decision: tuple | None) -> Path:
    """Write the card of ``ref`` (Markdown, HTML, images) under the reports folder and into its
    MLflow run, and point the version's description at it; returns the HTML file."""
    import mlflow

    c = tracking.client()
    run = c.get_run(ref.run_id)
    folder = card_folder(spec, ref.version)
    folder.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}
    importance = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, artifact in IMAGES.items():
            try:
                images[name] = Path(mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=artifact,
                                                                        dst_path=tmp)).read_bytes()
            except Exception:   # noqa: BLE001 - a card without that image says so by its absence
                continue
        try:
            importance = json.loads(Path(mlflow.artifacts.download_artifacts(
                run_id=ref.run_id, artifact_path=IMPORTANCE_ARTIFACT, dst_path=tmp)).read_text())
        except Exception:   # noqa: BLE001
            importance = None
    markdown = render_markdown(spec, ref, run, evaluation, decision, importance, set(images))
    for name, data in images.items():
        (folder / name).write_bytes(data)
    (folder / "model_card.md").write_text(markdown)
    html = folder / "model_card.html"
    html.write_text(render_html(markdown, images, f"{ref.name} v{ref.version}"))
    (folder / "checks.json").write_text(json.dumps(evaluation.results, indent=2, default=str))
    c.log_artifact(ref.run_id, str(folder / "model_card.md"), CARD_ARTIFACTS)
    c.log_artifact(ref.run_id, str(html), CARD_ARTIFACTS)
    line = decision_line(evaluation, decision).replace("**", "")
    c.update_model_version(ref.name, ref.version, description=tracking.tag_text(
        f"Model card: {html} (and artifact {CARD_ARTIFACTS}/model_card.html of run {ref.run_id}).\n\n{line}"))
    log.info("%s: model card of v%s: %s", spec.name, ref.version, html)
    return html


def review_summary(spec, evaluation: Evaluation) -> str:
    """What a reviewer sees in Airflow's approval form (Markdown): the version, the comparison,
    every check and where the full card is."""
    champion = evaluation.champion
    metric = evaluation.metric
    lines = [f"**{spec.name}**: challenger v{evaluation.challenger['version']} "
             f"(trained as of {evaluation.as_of}) against "
             + (f"champion v{champion['version']}" if champion else "no champion (first model)") + ".", "",
             f"{metric} on the holdout {evaluation.holdout}: challenger "
             f"{_cell(evaluation.challenger_value)}, champion {_cell(evaluation.champion_value) or '-'}.",
             ""]
    lines += _table(["check", "mode", "result", "reason"], [
        [c["name"], c["mode"], "passed" if c["passed"] else "FAILED", c["reason"][:300]]
        for c in evaluation.checks])
    lines += [f"Model card: `{evaluation.card}`", "",
              f"No answer within {spec.promotion.approval_timeout_hours:g} h counts as a rejection."]
    return "\n".join(lines)


def log_calibration_plot(task, y, holdout, ref) -> None:
    """Reliability diagram of challenger (and champion) on the holdout, into the challenger's run
    (``gate/calibration.png``); classification only."""
    import numpy as np
    from sklearn.calibration import CalibrationDisplay

    if task.kind is TaskType.REGRESSION or len(y) == 0:
        return
    plt = tracking.figures()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, outputs in (("challenger", holdout.challenger), (f"champion v{holdout.champion_version}", holdout.champion)):
        if outputs is None:
            continue
        if task.kind is TaskType.BINARY:
            truth, confidence = np.asarray(y), outputs["score"].to_numpy()
        else:   # the predicted class's probability against being right
            truth = (outputs["predicted_label"].to_numpy() == np.asarray(y)).astype(int)
            confidence = outputs["score"].to_numpy()
        if len(np.unique(truth)) < 2:
            continue
        CalibrationDisplay.from_predictions(truth, confidence, n_bins=10, name=label, ax=ax)
    ax.set_title("holdout calibration" + (" (predicted class)" if task.kind is TaskType.MULTICLASS else ""))
    tracking.client().log_figure(ref.run_id, fig, "gate/calibration.png")
    plt.close(fig)
