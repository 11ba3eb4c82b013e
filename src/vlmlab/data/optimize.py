"""`vlmlab-data optimize`: each source and split of a data config written as LitData chunks (the layout is in
`vlmlab.data.shards`), for `format: streaming` training from a local folder or object storage.

Every record is first checked exactly as `vlmlab-data check` checks it (encoded with the model's tokenizer,
its images decoded): a bad record is reported by reason and left out, counted. The kept records are then
written by `litdata.optimize` in parallel worker processes, in the split's order, with its progress bar.
A split whose folder holds a finished output of the same input (same records, same image files by size and
modification time, same check settings) is left as it is: running the command again is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from vlmlab.data.check import SplitReport, check_split
from vlmlab.data.conversation_dataset import record_images
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.formats import HFRecords
from vlmlab.data.image_processing import image_size
from vlmlab.data.lengths import record_image_count, record_words
from vlmlab.data.shards import (
    FORMAT_VERSION,
    LENGTHS_FILE,
    META_FILE,
    encode_item,
    join,
    lengths_file,
    read_meta,
    remove_meta,
    write_bytes,
)
from vlmlab.dependency_corners import hf_table_fingerprint
from vlmlab.errors import UsageError


@dataclass
class OptimizeResult:
    source: str
    split: str
    folder: str
    records: int
    kept: int
    up_to_date: bool  # nothing written: the folder already held this input
    report: SplitReport | None  # the check's report (None when up to date)


def _digest_default(value: Any) -> str:
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    return str(value)


def input_fingerprint(records: Any, settings: dict[str, Any]) -> str:
    """A digest of everything the output depends on: the settings (source, split, check options, model), every
    record, and every image file's path, size and modification time (the bytes of images stored in records).
    An HF table is taken by its own content fingerprint."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    if isinstance(records, HFRecords):
        digest.update(f"hf:{hf_table_fingerprint(records.table)}:{sorted(records.columns.items())}".encode())
        return digest.hexdigest()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, default=_digest_default).encode())
        for image in record_images(record) if isinstance(record, dict) else []:
            if isinstance(image, str) and os.path.exists(image):
                stat = os.stat(image)
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _item(index: int, records: Any) -> dict[str, Any]:
    record = records[index]
    return encode_item(record, record_images(record))


def optimize_split(
    datamodule: VLMDataModule,
    source: str,
    split: str,
    output: str,
    settings: dict[str, Any],
    num_workers: int = 1,
    chunk_bytes: str = "64MB",
    limit: int | None = None,
) -> OptimizeResult:
    """Write `<output>/<source>/<split>` unless it already holds this input. `settings`: what else the
    check depends on (the model and data options), part of the fingerprint."""
    from litdata import optimize

    folder = join(output, source, split)
    records = datamodule.records(source, split)
    fingerprint = input_fingerprint(
        records,
        {**settings, "source": datamodule.sources[source], "split": split, "limit": limit, "version": FORMAT_VERSION},
    )
    meta = read_meta(folder)
    if meta is not None and meta.get("fingerprint") == fingerprint:
        return OptimizeResult(source, split, folder, meta["records"], meta["kept"], True, None)
    report = check_split(datamodule, source, split, limit)
    if not report.kept:
        raise UsageError(
            f"{source}/{split}: none of its {report.records} records can become a sample "
            f"({', '.join(f'{r}: {len(ids)}' for r, ids in report.problems.items())}); nothing to write. "
            "`vlmlab-data check` lists them"
        )
    words, images, sizes = [], [], []
    policy = datamodule.image_policy(source, split)
    for index in report.kept:
        record = records[index]
        words.append(record_words(record))
        images.append(record_image_count(record))
        sizes += [image_size(image, policy=policy) for image in record_images(record)]
    remove_meta(folder)
    optimize(
        fn=partial(_item, records=records),
        inputs=report.kept,
        output_dir=folder,
        chunk_bytes=chunk_bytes,
        num_workers=max(1, min(num_workers, len(report.kept))),
        keep_data_ordered=True,  # items in the split's order: lengths.npz is indexed like them
        reorder_files=False,
        mode="overwrite",
        start_method="fork",  # the workers inherit the records instead of unpickling them
        verbose=False,  # LitData's worker logs and its lightning.ai advert: vlmlab-data prints a line per split
    )
    write_bytes(folder, LENGTHS_FILE, lengths_file(words, images, sizes))
    meta = {
        "version": FORMAT_VERSION,
        "source": source,
        "split": split,
        "task": datamodule.sources[source].get("task"),
        "fingerprint": fingerprint,
        "records": report.records,
        "kept": len(report.kept),
        "problems": {reason: [str(i) for i in ids] for reason, ids in report.problems.items()},
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_bytes(folder, META_FILE, json.dumps(meta, indent=1).encode())
    return OptimizeResult(source, split, folder, report.records, len(report.kept), False, report)
