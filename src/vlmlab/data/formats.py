"""Readers for datasets in the formats they were published in, all turned into one record form.

A record is LLaVA's (`id`, `image`, `conversations`) plus `answers`, every reference answer that
evaluation needs (the 10 VQAv2 answers, all DocVQA answers, all reference captions). Images are
resolved here: `image` is a list of file paths, or of `{"bytes", "path"}` dicts for images stored
inside an HF `datasets` table. Question-answer formats become a conversation through the source's
`prompt` template (`{question}` is replaced by the question).

A raw entry that cannot become a record (say, a VQAv2 question whose image id is missing) becomes a
record with `error: [reason, message]`; the dataset then skips or raises on it like on any bad record.

Each reader takes one split of a source: a mapping of the format's keys (see `SPLIT_KEYS`), and the
split's name (COCO's train split gives one record per caption, its other splits one per image).
A `streaming` split is any of these, already checked and written as LitData chunks by `vlmlab-data optimize`
(`vlmlab.data.shards`); its records come back as they were written, images stored inside.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vlmlab.data.record_store import RecordStore, iter_json_list, read_text
from vlmlab.data.shards import ShardRecords, is_url
from vlmlab.errors import UsageError

Record = dict[str, Any]

FORMATS = ("llava", "coco_captions", "vqav2", "docvqa", "pope", "hf", "streaming")
SPLIT_KEYS = {
    "streaming": {"path": True},  # a `vlmlab-data optimize` output folder or URL (vlmlab.data.shards)
    "llava": {"file": True, "images": False},
    "coco_captions": {"annotations": True, "images": True},
    "vqav2": {"questions": True, "annotations": False, "images": True},
    "docvqa": {"annotations": True, "images": True},
    "pope": {"questions": True, "images": True},
    "hf": {"path": True, "split": False, "columns": True},
}


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist; check the data config's paths")
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as err:
        raise UsageError(f"{what} file {path} is not valid JSON ({err}); re-download or fix the file") from err


def _field(container: Any, key: str, path: Path, fmt: str) -> Any:
    if not isinstance(container, dict) or key not in container:
        raise ValueError(f"{path} has no top-level '{key}': it is not a {fmt} file; check the split's paths")
    return container[key]


def qa_conversation(prompt: str, question: str | None, answer: str | None) -> list[dict[str, str]]:
    """A one-turn LLaVA conversation from the source's prompt template; no answer turn for unlabelled data."""
    turns = [{"from": "human", "value": prompt.format(question=question)}]
    if answer is not None:
        turns.append({"from": "gpt", "value": answer})
    return turns


def bad_record(record_id: Any, reason: str, message: str) -> Record:
    return {"id": record_id, "error": [reason, message]}


def read_llava(split: dict[str, Any], name: str, prompt: str | None) -> RecordStore:
    """LLaVA's JSON (558K pretraining, 665K instruction mix): a list of records, images relative to `images`.
    Decoded one record at a time into a `RecordStore` (the whole list never exists as dicts)."""
    path = Path(split["file"])
    root = Path(split.get("images") or path.parent)

    def resolved(records: Iterable[Any]) -> Iterator[Any]:
        for record in records:
            image = record.get("image") if isinstance(record, dict) else None  # not a dict: malformed, reported later
            if image is not None:
                record["image"] = [str(root / p) for p in ([image] if isinstance(image, str) else image)]
            yield record

    return RecordStore.from_records(resolved(iter_json_list(path, "LLaVA-format")))


def read_coco_captions(split: dict[str, Any], name: str, prompt: str | None) -> list[Record]:
    """COCO `captions_*.json` (`images` + `annotations`): train gives one record per caption, others per image."""
    path = Path(split["annotations"])
    data = read_json(path, "COCO captions")
    images = {image["id"]: image["file_name"] for image in _field(data, "images", path, "COCO captions")}
    captions: dict[Any, list[str]] = defaultdict(list)
    for annotation in _field(data, "annotations", path, "COCO captions"):
        captions[annotation.get("image_id")].append(annotation.get("caption"))
    root = Path(split["images"])
    records = []
    for image_id, texts in captions.items():
        if image_id not in images:
            records.append(
                bad_record(image_id, "malformed", f"captions name image id {image_id}, absent from 'images'")
            )
            continue
        base = {"image": [str(root / images[image_id])], "answers": texts}
        chosen = enumerate(texts) if name == "train" else [(0, texts[0])]
        for i, text in chosen:
            record_id = f"{image_id}-{i}" if name == "train" else image_id
            records.append({"id": record_id, **base, "conversations": qa_conversation(prompt, None, text)})
    return records


def read_vqav2(split: dict[str, Any], name: str, prompt: str | None) -> list[Record]:
    """VQAv2 questions (+ annotations, absent for test): the training answer is `multiple_choice_answer`
    (the most common of the 10), and all 10 human answers are kept as `answers`."""
    path = Path(split["questions"])
    data = read_json(path, "VQAv2 questions")
    questions = _field(data, "questions", path, "VQAv2 questions")
    subtype = _field(data, "data_subtype", path, "VQAv2 questions")  # e.g. train2014: part of image file names
    annotations = {}
    if split.get("annotations"):
        annotations_path = Path(split["annotations"])
        loaded = read_json(annotations_path, "VQAv2 annotations")
        annotations = {a["question_id"]: a for a in _field(loaded, "annotations", annotations_path, "VQAv2")}
    root = Path(split["images"])
    records = []
    for question in questions:
        qid = question.get("question_id")
        missing = [k for k in ("image_id", "question") if question.get(k) is None]
        if missing or not isinstance(question["question"], str):
            what = (
                f"has no {' and no '.join(repr(k) for k in missing)}"
                if missing
                else "has a 'question' that is not text"
            )
            records.append(bad_record(qid, "malformed", f"the VQAv2 question {what}"))
            continue
        annotation = annotations.get(qid)
        if annotations and annotation is None:
            records.append(bad_record(qid, "malformed", f"question {qid} has no annotation in {split['annotations']}"))
            continue
        answers = [a["answer"] for a in annotation["answers"]] if annotation else []
        target = annotation["multiple_choice_answer"] if annotation else None
        records.append(
            {
                "id": qid,
                "image": [str(root / f"COCO_{subtype}_{question['image_id']:012d}.jpg")],
                "conversations": qa_conversation(prompt, question["question"], target),
                "answers": answers,
            }
        )
    return records


def read_docvqa(split: dict[str, Any], name: str, prompt: str | None) -> list[Record]:
    """DocVQA `*_v1.0.json` (`data[]`): the first answer is trained on, all are kept; test has none."""
    path = Path(split["annotations"])
    root = Path(split["images"])
    records = []
    for entry in _field(read_json(path, "DocVQA"), "data", path, "DocVQA"):
        qid = entry.get("questionId")
        wrong = [k for k in ("image", "question") if not isinstance(entry.get(k), str)]
        if wrong:
            fields = " and ".join(f"'{k}'" for k in wrong)
            records.append(bad_record(qid, "malformed", f"the DocVQA entry has no {fields} (a string is needed)"))
            continue
        answers = entry.get("answers") or []
        records.append(
            {
                "id": qid,
                "image": [str(root / entry["image"])],
                "conversations": qa_conversation(prompt, entry["question"], answers[0] if answers else None),
                "answers": answers,
                "doc_id": entry.get("docId"),
            }
        )
    return records


POPE_LABELS = ("yes", "no")


def read_pope(split: dict[str, Any], name: str, prompt: str | None) -> list[Record]:
    """POPE's question files (RUCAIBox/POPE `output/coco/coco_pope_{random,popular,adversarial}.json`): one JSON
    object a line, `question_id`, `image` (a file name in `images`), `text` (the question) and `label` (yes or
    no), which is the answer trained on and the reference scored against."""
    path = Path(split["questions"])
    if not path.is_file():
        raise FileNotFoundError(f"POPE questions file {path} does not exist; check the data config's paths")
    root = Path(split["images"])
    records = []
    for number, line in enumerate(read_text(path, "POPE questions").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            records.append(bad_record(f"line {number}", "malformed", f"{path} line {number} is not JSON ({err})"))
            continue
        qid = entry.get("question_id", f"line {number}") if isinstance(entry, dict) else f"line {number}"
        fields = ("image", "text", "label")
        wrong = [k for k in fields if not isinstance(entry, dict) or not isinstance(entry.get(k), str)]
        if wrong or entry["label"] not in POPE_LABELS:
            problem = f"no {' or '.join(repr(k) for k in wrong)} string" if wrong else f"label {entry['label']!r}"
            message = f"line {number} of {path} has {problem}; a POPE question needs image, text and label yes or no"
            records.append(bad_record(qid, "malformed", message))
            continue
        records.append(
            {
                "id": qid,
                "image": [str(root / entry["image"])],
                "conversations": qa_conversation(prompt, entry["text"], entry["label"]),
                "answers": [entry["label"]],
            }
        )
    return records


class HFRecords(Sequence[Record]):
    """Rows of an HF `datasets` table as records, built when accessed (the table stays memory-mapped).

    `columns` maps record fields to column names: `image` (required), `id`, `question`, `answers`
    (a string, a list of strings, or VQAv2-style dicts with an `answer`), `target` (the answer to
    train on; default the first of `answers`) or `conversations` (LLaVA-style turns, instead of a
    prompt). Images are read undecoded, so a broken image is caught per record by the dataset.
    """

    def __init__(self, table: Any, columns: dict[str, str | None], prompt: str | None, source_path: str) -> None:
        from datasets import Image

        columns = {field: name for field, name in columns.items() if name}
        if "image" not in columns:
            raise ValueError(f"HF dataset {source_path}: the source's `columns` must name the `image` column")
        missing = [c for c in columns.values() if c not in table.column_names]
        if missing:
            raise ValueError(
                f"HF dataset {source_path} has no column(s) {missing}; it has {table.column_names}. "
                "Fix the source's `columns` mapping"
            )
        if "conversations" not in columns and prompt is None:
            raise ValueError(f"HF dataset {source_path}: map a `conversations` column or give the source a `prompt`")
        self.table = table.cast_column(columns["image"], Image(decode=False))
        self.columns = columns
        self.prompt = prompt

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]
        row = self.table[int(index)]
        return self.to_record(row, index)

    def to_record(self, row: dict[str, Any], index: int) -> Record:
        c = self.columns
        image = row[c["image"]]
        record: Record = {"id": row[c["id"]] if "id" in c else index, "image": [] if image is None else [image]}
        if "conversations" in c:
            record["conversations"] = row[c["conversations"]]
            return record
        answers = row.get(c.get("answers", ""), [])
        answers = (
            [answers] if isinstance(answers, str) else [a["answer"] if isinstance(a, dict) else a for a in answers]
        )
        target = row[c["target"]] if "target" in c else (answers[0] if answers else None)
        question = row[c["question"]] if "question" in c else None
        record.update(conversations=qa_conversation(self.prompt, question, target), answers=answers)
        return record

    def text_records(self) -> list[Record]:
        """Every record without reading image bytes (an image is `True` where present), for length estimates."""
        image_column = self.columns["image"]
        present = self.table.data.column(image_column).is_valid().to_pylist()
        text = self.table.remove_columns([image_column])
        records = []
        for i, (row, has_image) in enumerate(zip(text.to_list(), present)):
            record = self.to_record({**row, image_column: None}, i)
            record["image"] = [True] if has_image else []
            records.append(record)
        return records


def read_hf(split: dict[str, Any], name: str, prompt: str | None) -> HFRecords:
    """A table saved with HF `datasets`: a `save_to_disk` folder (a Dataset, or a DatasetDict whose split
    is chosen by `split`, default the vlmlab split name) or parquet file(s)."""
    import datasets

    path = str(split["path"])
    if path.endswith(".parquet"):
        table = datasets.Dataset.from_parquet(path)
    else:
        if not Path(path).exists():
            raise FileNotFoundError(f"HF dataset folder {path} does not exist; check the data config's paths")
        table = datasets.load_from_disk(path)
        if isinstance(table, datasets.DatasetDict):
            key = split.get("split") or name
            if key not in table:
                raise ValueError(f"HF dataset {path} has splits {list(table)}, not '{key}'; set the split's `split`")
            table = table[key]
    return HFRecords(table, dict(split["columns"]), prompt, path)


READERS: dict[str, Callable[[dict[str, Any], str, str | None], Sequence[Record]]] = {
    "llava": read_llava,
    "coco_captions": read_coco_captions,
    "vqav2": read_vqav2,
    "docvqa": read_docvqa,
    "pope": read_pope,
    "hf": read_hf,
}


def source_format(source: dict[str, Any]) -> str:
    """A source's `format`; a source that names none holds LLaVA-format files (a bare path: format llava)."""
    return source.get("format") or "llava"


def split_spec(source_name: str, source: dict[str, Any], split: str) -> dict[str, Any] | None:
    """The split's mapping, checked against its format. A bare path is a LLaVA file with the source's
    `image_root` (or the file's folder) as image folder. None when the source has no such split."""
    fmt = source_format(source)
    if fmt not in FORMATS:
        raise ValueError(f"data source '{source_name}' has format '{fmt}'; formats: {', '.join(FORMATS)}")
    value = source.get(split)
    if value is None:
        return None
    if isinstance(value, str) and fmt == "streaming":
        value = {"path": value}
    if isinstance(value, str):
        if fmt != "llava":
            raise ValueError(
                f"data source '{source_name}' ({fmt}): split '{split}' must be a mapping with "
                f"{', '.join(SPLIT_KEYS[fmt])}, not a path"
            )
        value = {"file": value, "images": source.get("image_root")}
    value = dict(value)
    for key, required in SPLIT_KEYS[fmt].items():
        if required and not value.get(key):
            raise ValueError(f"data source '{source_name}' ({fmt}): split '{split}' needs '{key}'")
    unknown = set(value) - set(SPLIT_KEYS[fmt])
    if unknown:
        raise ValueError(
            f"data source '{source_name}' ({fmt}): split '{split}' has unknown key(s) {sorted(unknown)}; "
            f"a {fmt} split takes {', '.join(SPLIT_KEYS[fmt])}"
        )
    needs_prompt = fmt not in ("llava", "streaming") and not (value.get("columns") or {}).get("conversations")
    if needs_prompt and not source.get("prompt"):
        raise ValueError(f"data source '{source_name}' ({fmt}) needs a `prompt` template to turn questions into turns")
    return value


def split_origin(source_name: str, source: dict[str, Any], split: str) -> str | None:
    """The file a split's records come from (its format's first key: file, annotations, questions, path),
    named in the messages about its records."""
    spec = split_spec(source_name, source, split)
    if spec is None:
        return None
    return str(spec[next(iter(SPLIT_KEYS[source_format(source)]))])


def split_image_root(source_name: str, source: dict[str, Any], split: str) -> str | None:
    """The folder a split's image files must lie in: its `images` (a LLaVA file's folder when it names none);
    None for formats that store their images inside (HF tables, shards)."""
    spec = split_spec(source_name, source, split)
    fmt = source_format(source)
    if spec is None or fmt in ("hf", "streaming"):
        return None
    return str(spec.get("images") or Path(spec["file"]).parent) if fmt == "llava" else str(spec["images"])


def missing_paths(source_name: str, source: dict[str, Any], split: str) -> list[str]:
    """The split's files and image folders that do not exist, each as `<source>.<split>.<key>=<path>`:
    found before anything is built (the readers would find them only when the data loads)."""
    spec = split_spec(source_name, source, split)
    if spec is None:
        return []
    missing = []
    for key, required in SPLIT_KEYS[source_format(source)].items():
        value = spec.get(key)
        if key in ("split", "columns") or not value or any(c in str(value) for c in "*?[") or is_url(str(value)):
            continue
        if key == "images" and not required:  # a LLaVA file's image folder: its records may hold no image
            continue
        if not Path(str(value)).exists():
            missing.append(f"{source_name}.{split}.{key}={value}")
    return missing


def read_split(
    source_name: str, source: dict[str, Any], split: str, streaming: dict[str, Any] | None = None
) -> Sequence[Record]:
    """The records of one split of a configured source, in a form that loader workers share without copying
    (a `RecordStore`, the memory-mapped table of an HF source, or optimised shards read through LitData with
    the `streaming` options `cache_dir` and `max_cache_size`)."""
    spec = split_spec(source_name, source, split)
    if spec is None:
        raise ValueError(f"data source '{source_name}' has no '{split}' split in the data config")
    if source_format(source) == "streaming":
        options = {k: v for k, v in (streaming or {}).items() if k in ("cache_dir", "max_cache_size")}
        return ShardRecords(str(spec["path"]), **options)
    records = READERS[source_format(source)](spec, split, source.get("prompt"))
    return records if isinstance(records, RecordStore | HFRecords) else RecordStore.from_records(records)
