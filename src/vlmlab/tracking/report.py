"""Comparison reports from MLflow: one row per curriculum run of a sweep (or an experiment), named as the run
is, the test metrics per task beside their blind baselines, parameters, image tokens and training throughput,
as a markdown table and a plot (with the runs' training loss)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

THROUGHPUT = "train/device/items_per_sec"  # Lightning ThroughputMonitor: LLM tokens per second per device
LOSS = "train/loss"
LABEL_WIDTH = 60  # characters of a run's name per legend line


@dataclass
class ReportRow:
    label: str
    scores: dict[str, float]  # test/<task>/<metric> -> value (blind baselines apart)
    facts: dict[str, float] = field(default_factory=dict)  # parameters, image tokens, tokens/s
    blind: dict[str, float] = field(default_factory=dict)  # test/<task>/<metric> -> the blind baseline's value
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step over all stages, train/loss)


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
    """Each run's name (`<experiment> · <what its command line changed>`, `vlmlab.training.run_naming`) less the
    changes that every run of the report shares; a name given twice gets its order (`#2`)."""
    heads, changes = [], []
    for run in runs:
        head, _, changed = (run.info.run_name or run.info.run_id).partition(" · ")
        heads.append(head)
        changes.append(changed.split())
    shared = set.intersection(*(set(c) for c in changes)) if len(runs) > 1 else set()
    names = []
    for head, own in zip(heads, changes):
        distinct = " ".join(c for c in own if c not in shared)
        names.append(f"{head} · {distinct}" if distinct else head)
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name} #{seen[name]}"
    return names


def stage_runs(client: MlflowClient, run: Run) -> list[Run]:
    """The stage runs of a curriculum run, in the order they ran."""
    return client.search_runs(
        [run.info.experiment_id],
        f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )


def mean_throughput(client: MlflowClient, stage: Run) -> float | None:
    """Mean tokens/s per device over a stage's logged values (None when not measured)."""
    values = [m.value for m in client.get_metric_history(stage.info.run_id, THROUGHPUT)]
    return sum(values) / len(values) if values else None


def loss_curve(client: MlflowClient, stages: list[Run]) -> list[tuple[int, float]]:
    """`train/loss` of every stage, one after the other: a stage's steps start where the previous one ended."""
    curve: list[tuple[int, float]] = []
    for stage in stages:
        history = sorted((m.step, m.value) for m in client.get_metric_history(stage.info.run_id, LOSS))
        offset = curve[-1][0] if curve else 0
        curve += [(offset + step, value) for step, value in history]
    return curve


def collect(client: MlflowClient, experiment: str, sweep: str | None = None) -> list[ReportRow]:
    runs = curriculum_runs(client, experiment, sweep)
    rows = []
    for run, label in zip(runs, labels(runs)):
        metrics = run.data.metrics
        scores = {k: v for k, v in metrics.items() if k.startswith("test/") and "/blind_" not in k}
        blind = {k.replace("/blind_", "/"): v for k, v in metrics.items() if k.startswith("test/") and "/blind_" in k}
        facts = {k: v for k, v in metrics.items() if k.startswith("model/")}
        stages = stage_runs(client, run)
        throughput = mean_throughput(client, stages[-1]) if stages else None
        if throughput is not None:
            facts["tokens_per_sec"] = throughput
        rows.append(ReportRow(label, scores, facts, blind, loss_curve(client, stages)))
    return rows


def markdown_table(rows: list[ReportRow]) -> str:
    """A row per run: each score with its blind baseline in brackets, then the model's facts."""
    score_keys = sorted({k for r in rows for k in r.scores})
    fact_keys = [
        k for k in ("model/params/connector", "model/image_tokens", "tokens_per_sec") if any(k in r.facts for r in rows)
    ]
    header = ["run", *(k.removeprefix("test/") for k in score_keys), *fact_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.label]
        cells += [_score(row.scores.get(k), row.blind.get(k)) for k in score_keys]
        cells += [_fact(k, row.facts.get(k)) for k in fact_keys]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\nScores with images; in brackets, the blind baseline (every image blanked).\n"
        if any(r.blind for r in rows)
        else ""
    )
    return "\n".join(lines) + "\n" + note


def _score(value: float | None, blind: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" + ("" if blind is None else f" ({blind:.3f})")


def _fact(key: str, value: float | None) -> str:
    if value is None:
        return ""
    if key == "model/params/connector":
        return f"{value:,.0f}"
    return f"{value:.0f}"


def report_figure(rows: list[ReportRow]) -> Figure:
    """One panel per task metric, each with its own y axis from 0 (CIDEr-D near 10 must not flatten accuracies
    near 1; an all-zero metric still shows 0 to 1), a bar per run and, beside it, hatched, its blind baseline;
    below, the training loss of every run over all its stages; the run names in a legend under the panels,
    wrapped."""
    keys = sorted({k for r in rows for k in r.scores})
    columns = min(4, max(1, len(keys)))
    score_lines = -(-len(keys) // columns)
    has_loss = any(r.loss for r in rows)
    wrapped = [textwrap.fill(row.label, LABEL_WIDTH) for row in rows]
    heights = [label.count("\n") + 1 for label in wrapped] + [1]  # + the blind baseline's entry
    legend_lines = sum(max(heights[i : i + 2]) for i in range(0, len(heights), 2))  # two columns
    legend_height = 0.22 * legend_lines + 0.3
    height = 2.8 * score_lines + (3.0 if has_loss else 0.0) + legend_height
    width = min(16.0, max(2.5, 0.6 * len(rows) + 1.0) * columns)
    figure = Figure(figsize=(max(width, 8.0), height))  # no pyplot: no global state
    grid = figure.add_gridspec(score_lines + has_loss, columns, height_ratios=[2.8] * score_lines + [3.0] * has_loss)
    colours = [f"C{i % 10}" for i in range(len(rows))]
    for index, key in enumerate(keys):
        panel = figure.add_subplot(grid[index // columns, index % columns])
        values = [row.scores.get(key, 0.0) for row in rows]
        blinds = [row.blind.get(key) for row in rows]
        positions = range(len(rows))
        bars = panel.bar([p - 0.2 for p in positions], values, width=0.4, color=colours)
        panel.bar_label(bars, fmt="%.2f", fontsize="x-small")
        shown = [(p + 0.2, b, c) for p, b, c in zip(positions, blinds, colours) if b is not None]
        if shown:
            panel.bar(
                [p for p, _, _ in shown],
                [b for _, b, _ in shown],
                width=0.4,
                color="white",
                edgecolor=[c for _, _, c in shown],
                hatch="///",
            )
        top = max([*values, *(b for b in blinds if b is not None)], default=0.0)
        panel.set_ylim(0, top * 1.2 if top > 0 else 1.0)
        panel.set_title(key.removeprefix("test/"), fontsize="medium")
        panel.set_xticks([])
    if has_loss:
        panel = figure.add_subplot(grid[score_lines, :])
        for row, colour in zip(rows, colours):
            if row.loss:
                steps, values = zip(*row.loss)
                panel.plot(steps, values, color=colour, linewidth=1.0)
        panel.set_xlabel("step (all stages, one after another)")
        panel.set_ylabel("train loss")
        panel.set_title("training loss", fontsize="medium")
    handles = [Patch(color=colour, label=label) for colour, label in zip(colours, wrapped)]
    if any(r.blind for r in rows):
        handles.append(Patch(facecolor="white", edgecolor="grey", hatch="///", label="blind baseline (hatched)"))
    figure.legend(handles=handles, loc="lower center", ncol=min(2, len(handles)), fontsize="small", frameon=False)
    figure.tight_layout(rect=(0, legend_height / height, 1, 1))
    return figure


def write_report(client: MlflowClient, experiment: str, out: Path, sweep: str | None = None) -> tuple[Path, Path, str]:
    """`out/report.md` and `out/report.png`, also logged to a `report` run of the experiment (returned)."""
    rows = collect(client, experiment, sweep)
    out.mkdir(parents=True, exist_ok=True)
    table, image = out / "report.md", out / "report.png"
    table.write_text(markdown_table(rows))
    report_figure(rows).savefig(image, dpi=120)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    tags = {"mlflow.runName": "report", "kind": "report", **({"sweep": sweep} if sweep else {})}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    client.log_artifact(run_id, str(table))
    client.log_artifact(run_id, str(image))
    client.set_terminated(run_id)
    return table, image, run_id
