"""`vlmlab-data check`: encode every record of a configured dataset exactly as training would, and
report records, images found on disk, problems by reason (with the first ids), token length percentiles and
image tokens per image (which vary with each image's tile grid under `data.image_resize=anyres`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Subset

from vlmlab.data.chat_format import SampleError
from vlmlab.data.conversation_dataset import record_images
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.models.image_layout import ImageTokenLayout, NativeTokenLayout
from vlmlab.terminal import table_console

SHOWN_IDS = 5  # problem ids listed per reason
PERCENTILES = (50, 90, 99, 100)


@dataclass
class SplitReport:
    source: str
    split: str
    records: int = 0
    images_referenced: int = 0
    images_found: int = 0
    problems: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    lengths: list[int] = field(default_factory=list)
    image_tokens: list[int] = field(default_factory=list)  # per image
    kept: list[int] = field(default_factory=list)  # indices of the records that became samples

    @property
    def num_problems(self) -> int:
        return sum(len(ids) for ids in self.problems.values())

    def length_percentiles(self) -> dict[int, int]:
        return percentiles(self.lengths)

    def image_token_percentiles(self) -> dict[int, int]:
        return percentiles(self.image_tokens)


def percentiles(values: list[int]) -> dict[int, int]:
    if not values:
        return {}
    tensor = torch.tensor(values, dtype=torch.float)
    return {p: int(torch.quantile(tensor, p / 100, interpolation="nearest")) for p in PERCENTILES}


def _summaries(
    samples: list[dict[str, Any]], layout: ImageTokenLayout | NativeTokenLayout | None, per_image: int
) -> list[tuple[Any, str | None, str, int, list[int]]]:
    """(id, skip reason, message, tokens, image tokens of each image) per sample: all the report keeps of a batch."""
    summaries = []
    for s in samples:
        if "skipped" in s:
            summaries.append((s["id"], s["skipped"], s["message"], 0, []))
            continue
        grids = s.get("image_grids")
        grids = [] if grids is None else grids.tolist()
        images = [layout.count(g) for g in grids] if layout is not None else [per_image] * len(grids)
        summaries.append((s["id"], None, "", len(s["input_ids"]), images))
    return summaries


def check_split(
    datamodule: VLMDataModule, source: str, split: str, limit: int | None = None, batch_size: int = 32
) -> SplitReport:
    """Training and validation splits are encoded with labels, the test split as generation prompts.

    With the data module's `on_bad_record="raise"` the first bad record raises its `SampleError`
    here, in this process (a worker's exception would reach us wrapped in a traceback).
    """
    dataset = datamodule.dataset(source, split, prompt_only=split == "test")
    dataset.on_bad_record = "skip"  # problems come back as markers; the policy is applied below
    records = datamodule.records(source, split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    report = SplitReport(source, split, records=count)
    if count == 0:
        report.problems["empty"].append(f"{source}/{split}")  # a split that trains or scores on nothing
    seen: set[Any] = set()
    for i in range(count):
        record_id = records[i].get("id") if isinstance(records[i], dict) else None
        if record_id is not None:
            key = record_id if isinstance(record_id, str | int) else repr(record_id)
            if key in seen:  # predictions and scores are matched by id
                report.problems["duplicate_id"].append(record_id)
            seen.add(key)
        images = record_images(records[i]) if isinstance(records[i], dict) else []
        report.images_referenced += len(images)
        # Files on disk are looked up; images stored in an HF table are there by construction.
        report.images_found += sum(isinstance(image, dict) or Path(image).is_file() for image in images)
    loader = DataLoader(
        Subset(dataset, range(count)),
        batch_size=batch_size,
        num_workers=datamodule.num_workers,
        collate_fn=partial(_summaries, layout=dataset.image_layout, per_image=datamodule.formatter.num_image_tokens),
    )
    summaries = (summary for batch in loader for summary in batch)  # in record order
    for index, (record_id, reason, message, tokens, image_tokens) in enumerate(summaries):
        if reason is not None and datamodule.on_bad_record == "raise":
            raise SampleError(reason, message)
        if reason is not None:
            report.problems[reason].append(record_id)
        else:
            report.kept.append(index)
            report.lengths.append(tokens)
            report.image_tokens.extend(image_tokens)
    return report


def splits_to_check(
    sources: dict[str, Any], splits: Iterable[str] = ("train", "val", "test"), only: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """(source, split) pairs: every configured split of the sources (`only` these, when given)."""
    names = list(only) if only else list(sources)
    return [(name, split) for name in names for split in splits if sources[name].get(split) is not None]


def check_datamodule(
    datamodule: VLMDataModule, pairs: Iterable[tuple[str, str]], limit: int | None = None
) -> list[SplitReport]:
    return [check_split(datamodule, name, split, limit) for name, split in pairs]


def report_dict(reports: list[SplitReport], max_length: int) -> dict[str, Any]:
    """The report as data (`vlmlab-data check --json`): per split, counts, problems by reason with every
    id, and the token-length percentiles."""
    return {
        "max_length": max_length,
        "splits": [
            {
                "source": r.source,
                "split": r.split,
                "records": r.records,
                "images_referenced": r.images_referenced,
                "images_found": r.images_found,
                "problems": {reason: list(ids) for reason, ids in r.problems.items()},
                "num_problems": r.num_problems,
                "token_length_percentiles": {f"p{p}": v for p, v in r.length_percentiles().items()},
                "image_tokens_per_image": {f"p{p}": v for p, v in r.image_token_percentiles().items()},
            }
            for r in reports
        ],
    }


def print_report(reports: list[SplitReport], max_length: int, console: Console | None = None) -> None:
    table = Table(title=f"dataset check: token lengths by percentile (max_length={max_length})")
    columns = ("source", "split", "records", "images", *(f"p{p}" for p in PERCENTILES), "image tokens p50/p99")
    for column in (*columns, "problems"):
        table.add_column(column, justify="left" if column in ("source", "split", "problems") else "right")
    for r in reports:
        percentiles = r.length_percentiles()
        problems = "\n".join(
            f"{reason}: {len(ids)} (e.g. {', '.join(map(str, ids[:SHOWN_IDS]))})" for reason, ids in r.problems.items()
        )
        table.add_row(
            r.source,
            r.split,
            str(r.records),
            f"{r.images_found}/{r.images_referenced}",
            *(str(percentiles.get(p, "-")) for p in PERCENTILES),
            "/".join(str(r.image_token_percentiles().get(p, "-")) for p in (50, 99)),
            problems or "none",
        )
    (console or table_console()).print(table)
