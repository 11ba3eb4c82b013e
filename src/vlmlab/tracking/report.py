"""Comparison reports from MLflow: one row per curriculum run of a sweep (or an experiment), the test
metrics per task, parameters, image tokens and training throughput, as a markdown table and a plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

THROUGHPUT = "train/device/items_per_sec"  # Lightning ThroughputMonitor: LLM tokens per second per device


@dataclass
class ReportRow:
    label: str
    scores: dict[str, float]  # test/<task>/<metric> -> value (blind baselines left out)
    facts: dict[str, float] = field(default_factory=dict)  # parameters, image tokens, tokens/s


def curriculum_runs(client: MlflowClient, experiment: str, sweep: str | None) -> list[Run]:
    """The finished curriculum runs of `experiment` (of one sweep when `sweep` names its folder)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment '{experiment}' in {client.tracking_uri}")
    query = "tags.kind = 'curriculum' and attributes.status = 'FINISHED'"
    if sweep:
        query += f" and tags.sweep = '{sweep}'"
    runs = client.search_runs([found.experiment_id], query, order_by=["attributes.start_time ASC"])
    if not runs:
        raise ValueError(
            f"experiment '{experiment}' has no finished curriculum runs{f' in sweep {sweep}' if sweep else ''}"
        )
    return runs


def labels(runs: list[Run]) -> list[str]:
    """What sets each run apart: the sweep overrides not shared by all runs, else the run name."""
    overrides = [r.data.tags.get("sweep.overrides", "").split() for r in runs]
    shared = set.intersection(*(set(o) for o in overrides)) if overrides else set()
    return [" ".join(o for o in own if o not in shared) or r.info.run_name for r, own in zip(runs, overrides)]


def last_stage_throughput(client: MlflowClient, run: Run) -> float | None:
    """Mean tokens/s per device over the logged values of the run's last stage (None when not measured)."""
    children = client.search_runs(
        [run.info.experiment_id],
        f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        order_by=["attributes.start_time DESC"],
    )
    for child in children[:1]:
        values = [m.value for m in client.get_metric_history(child.info.run_id, THROUGHPUT)]
        if values:
            return sum(values) / len(values)
    return None


def collect(client: MlflowClient, experiment: str, sweep: str | None = None) -> list[ReportRow]:
    runs = curriculum_runs(client, experiment, sweep)
    rows = []
    for run, label in zip(runs, labels(runs)):
        metrics = run.data.metrics
        scores = {k: v for k, v in metrics.items() if k.startswith("test/") and "/blind_" not in k}
        facts = {k: v for k, v in metrics.items() if k.startswith("model/")}
        throughput = last_stage_throughput(client, run)
        if throughput is not None:
            facts["tokens_per_sec"] = throughput
        rows.append(ReportRow(label, scores, facts))
    return rows


def markdown_table(rows: list[ReportRow]) -> str:
    score_keys = sorted({k for r in rows for k in r.scores})
    fact_keys = [
        k for k in ("model/params/connector", "model/image_tokens", "tokens_per_sec") if any(k in r.facts for r in rows)
    ]
    header = ["run", *(k.removeprefix("test/") for k in score_keys), *fact_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.label]
        cells += [f"{row.scores[k]:.3f}" if k in row.scores else "" for k in score_keys]
        cells += [_fact(k, row.facts.get(k)) for k in fact_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fact(key: str, value: float | None) -> str:
    if value is None:
        return ""
    if key == "model/params/connector":
        return f"{value:,.0f}"
    return f"{value:.0f}"


def plot(rows: list[ReportRow], path: Path) -> None:
    """One panel per task metric, each with its own y axis (CIDEr-D near 10 must not flatten accuracies near
    1), one bar per run; a shared legend."""
    keys = sorted({k for r in rows for k in r.scores})
    columns = min(4, max(1, len(keys)))
    lines = -(-max(1, len(keys)) // columns)
    panel_width = max(2.5, 0.35 * len(rows) + 1.0)
    figure = Figure(figsize=(min(16.0, panel_width * columns), 2.8 * lines + 1.0))  # no pyplot: no global state
    axes = figure.subplots(lines, columns, squeeze=False).flatten()
    colours = [f"C{i % 10}" for i in range(len(rows))]
    for panel, key in zip(axes, keys):
        values = [row.scores.get(key, 0.0) for row in rows]
        bars = panel.bar(range(len(rows)), values, color=colours)
        panel.set_title(key.removeprefix("test/"), fontsize="medium")
        panel.set_xticks([])
        panel.bar_label(bars, fmt="%.2f", fontsize="x-small")
        panel.margins(y=0.15)
    for panel in axes[len(keys) :]:
        panel.set_visible(False)
    handles = [Patch(color=colour, label=row.label) for colour, row in zip(colours, rows)]
    figure.legend(handles=handles, loc="lower center", ncol=min(4, max(1, len(rows))), fontsize="small")
    figure.tight_layout(rect=(0, 0.12 if rows else 0, 1, 1))
    figure.savefig(path, dpi=120)


def write_report(client: MlflowClient, experiment: str, out: Path, sweep: str | None = None) -> tuple[Path, Path, str]:
    """`out/report.md` and `out/report.png`, also logged to a `report` run of the experiment (returned)."""
    rows = collect(client, experiment, sweep)
    out.mkdir(parents=True, exist_ok=True)
    table, image = out / "report.md", out / "report.png"
    table.write_text(markdown_table(rows))
    plot(rows, image)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    tags = {"mlflow.runName": "report", "kind": "report", **({"sweep": sweep} if sweep else {})}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    client.log_artifact(run_id, str(table))
    client.log_artifact(run_id, str(image))
    client.set_terminated(run_id)
    return table, image, run_id
