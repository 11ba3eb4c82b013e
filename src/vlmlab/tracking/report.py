"""Comparison reports from MLflow: one row per curriculum run of a sweep (or an experiment), the test
metrics per task, parameters, image tokens and training throughput, as a markdown table and a plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
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
    """Grouped bars: one group per task metric, one bar per run."""
    keys = sorted({k for r in rows for k in r.scores})
    figure = Figure(figsize=(min(16.0, max(6.0, 0.25 * len(keys) * len(rows))), 4.5))  # no pyplot: no global state
    axes = figure.subplots()
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        positions = [j + i * width for j in range(len(keys))]
        axes.bar(positions, [row.scores.get(k, 0.0) for k in keys], width, label=row.label)
    axes.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
    axes.set_xticklabels([k.removeprefix("test/") for k in keys], rotation=30, ha="right")
    axes.set_ylabel("test score")
    axes.legend(fontsize="small")
    figure.tight_layout()
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
