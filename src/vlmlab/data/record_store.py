"""`RecordStore`: a split's records held as one Arrow array of JSON documents, shared by loader workers.

A list of Python dicts is written to by every read (reference counts, the cyclic collector's flags), so a
loader worker, forked with the list, copies each memory page it reads: over an epoch every worker holds
its own copy of the records, and host memory grows with processes x workers (PyTorch's copy-on-write
problem). An Arrow buffer is plain memory that reading never writes, so the workers keep sharing the
parent's pages. A record is decoded from its JSON document when it is read (tens of microseconds).

Built from any reader's records (`from_records`), or straight from a LLaVA-format JSON list without ever
holding all records as dicts (`iter_json_list`): the peak is the file's text plus the store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vlmlab.data.lengths import SampleLengths, lengths_from_counts, record_image_count, record_words
from vlmlab.errors import UsageError

Record = dict[str, Any]
CHUNK = 8192  # records encoded per Arrow chunk while building
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class RecordStore(Sequence[Record]):
    """Records as JSON documents in one Arrow array, with each record's word and image counts (for length
    grouping without decoding). Read-only: `store[i]` is a new dict each time."""

    def __init__(self, documents: pa.ChunkedArray, words: np.ndarray, images: np.ndarray) -> None:
        self.documents = documents  # large_binary, one JSON document per record, in chunks
        self.words = words  # int32 per record
        self.images = images  # int16 per record

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> RecordStore:
        """Encode records (dicts, or any JSON value a reader passed on) one chunk at a time."""
        chunks: list[pa.Array] = []
        words: list[int] = []
        images: list[int] = []
        pending: list[bytes] = []
        for record in records:
            pending.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode())
            words.append(record_words(record))
            images.append(record_image_count(record))
            if len(pending) == CHUNK:
                chunks.append(pa.array(pending, type=pa.large_binary()))
                pending = []
        chunks.append(pa.array(pending, type=pa.large_binary()))
        # Kept in chunks: combining them would hold the store twice at the peak, and Arrow's allocator would
        # keep the freed half resident (in every worker's RSS as well).
        documents = pa.chunked_array(chunks, type=pa.large_binary())
        return cls(documents, np.asarray(words, dtype=np.int32), np.asarray(images, dtype=np.int16))

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        return json.loads(self.documents[index].as_py())

    def __iter__(self) -> Iterator[Record]:
        for index in range(len(self)):
            yield self[index]

    def estimated_lengths(self, image_tokens: int) -> SampleLengths:
        """`vlmlab.data.lengths.estimate_length` of every record, from the stored counts."""
        return lengths_from_counts(self.words, self.images, self.images.astype(np.int64) * image_tokens)

    @property
    def nbytes(self) -> int:
        return self.documents.nbytes + self.words.nbytes + self.images.nbytes


def read_text(path: Path, what: str) -> str:
    """A data file's text (UTF-8, as JSON requires); a UsageError naming the file and the first bad byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"{what} file {path} is not UTF-8 text (byte {err.start}: {err.object[err.start : err.start + 1]!r}); "
            "JSON files are UTF-8: re-encode it (e.g. iconv -f <its encoding> -t utf-8)"
        ) from err


def iter_json_list(path: str | Path, what: str) -> Iterator[Any]:
    """The elements of the JSON list in `path`, decoded one at a time (the dicts of the whole list never
    exist at once). A file that is not a JSON list is a `UsageError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist; check the data config's paths")
    text = read_text(path, what)
    decoder = json.JSONDecoder()
    index = _WHITESPACE.match(text).end()
    if not text.startswith("[", index):
        raise ValueError(f"{path} must hold a JSON list of records ({what}), found another JSON value")
    index = _WHITESPACE.match(text, index + 1).end()
    if text.startswith("]", index):
        return
    while True:
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as err:
            raise UsageError(f"{what} file {path} is not valid JSON ({err}); re-download or fix the file") from err
        yield value
        index = _WHITESPACE.match(text, index).end()
        if text.startswith("]", index):
            return
        if not text.startswith(",", index):
            raise UsageError(
                f"{what} file {path} is not valid JSON (expected ',' or ']' at char {index}); re-download or fix it"
            )
        index = _WHITESPACE.match(text, index + 1).end()
