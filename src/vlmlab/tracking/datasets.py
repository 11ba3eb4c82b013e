"""What a stage trained on, as MLflow dataset inputs of its run: one per source and split, with its record
count and a digest of its records, so that the UI's Dataset column tells runs on different data apart.

The digest hashes the record count and the first `DIGEST_RECORDS` records (their text and image paths, not
the image files), as MLflow's own datasets hash their first 10,000 rows: reading every record of a large
or streamed source would cost more than the stage's start-up is worth.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

DIGEST_RECORDS = 10_000
DIGEST_CHARS = 12  # shown beside the name in the UI; MLflow's own digests are 8 characters
CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # split -> MLflow's input context


@dataclass(frozen=True)
class DataSplit:
    source: str  # the data config's source name, e.g. caption
    split: str  # train | val | test
    origin: str | None  # the file (or folder, URL) its records come from
    num_records: int
    digest: str

    @property
    def name(self) -> str:
        return f"{self.source}/{self.split}"


def records_digest(records: Sequence[Any], limit: int = DIGEST_RECORDS) -> str:
    """A short hash of the record count and the first `limit` records (as sorted-key JSON); for optimised shards
    (`vlmlab.data.shards.ShardRecords`), of the fingerprint they were written with, so that nothing is read."""
    digest = hashlib.sha256(str(len(records)).encode())
    fingerprint = getattr(records, "fingerprint", None)
    if isinstance(fingerprint, str):
        digest.update(fingerprint.encode())
        return digest.hexdigest()[:DIGEST_CHARS]
    for record in itertools.islice(records, limit):
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:DIGEST_CHARS]


def data_split(source: str, split: str, origin: str | None, records: Sequence[Any]) -> DataSplit:
    return DataSplit(source, split, origin, len(records), records_digest(records))


def dataset_input(data: DataSplit) -> DatasetInput:
    """The MLflow input: name `<source>/<split>`, the digest, the origin as its source, the record count as its
    profile (`num_rows`, as MLflow's datasets have it) and the split's context (training, validation, testing)."""
    origin = data.origin or ""
    source_type = origin.split("://")[0] if "://" in origin else "local"
    dataset = Dataset(
        name=data.name,
        digest=data.digest,
        source_type=source_type,
        source=json.dumps({"uri": origin}),
        profile=json.dumps({"num_rows": data.num_records}),
    )
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, CONTEXTS.get(data.split, data.split))])


def log_datasets(client: MlflowClient, run_id: str, splits: Iterable[DataSplit]) -> None:
    """Log the splits as the run's dataset inputs (MLflow keeps one input per dataset name and digest: logging
    the same split again, as a resumed stage does, adds nothing)."""
    inputs = [dataset_input(s) for s in splits]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
