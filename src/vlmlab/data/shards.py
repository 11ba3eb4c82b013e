"""Optimised shards: one split of a source as LitData chunks, written by `vlmlab-data optimize` and read by
`format: streaming` sources (or every source at once with `data.shards`).

A split's folder, `<output>/<source>/<split>/` on a local disk or behind an s3:// (gs://, r2://) URL, holds:
- LitData's `index.json` and `chunk-*.bin`: one item per record that passed `vlmlab-data check`, in the
  split's order: the record's JSON (image paths kept, for messages) and its images' file bytes end to end;
- `lengths.npz`: per item its words, its image count and each image's height and width, so that batches
  can be planned (length grouping, AnyRes token counts) without reading any item;
- `vlmlab.json`, written last: what the folder was made from (source, split, a fingerprint of the records and
  image files, the check's settings), how many records were kept and the problems of those left out.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, open_dict

from vlmlab.data.lengths import SampleLengths, lengths_from_counts
from vlmlab.dependency_corners import read_whole_chunks, storage_provider

Record = dict[str, Any]
META_FILE = "vlmlab.json"
LENGTHS_FILE = "lengths.npz"
INDEX_FILE = "index.json"
FORMAT_VERSION = 1


def is_url(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a folder or a URL."""
    return "/".join([base.rstrip("/"), *parts]) if is_url(base) else str(Path(base, *parts))


def read_bytes(folder: str, name: str) -> bytes:
    """A file of a shard folder, local or remote (through LitData's storage providers, which read the
    usual AWS_* / GOOGLE_* settings, AWS_ENDPOINT_URL included)."""
    if not is_url(folder):
        return Path(folder, name).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, name)
        storage_provider(folder).download_file(join(folder, name), local)
        return Path(local).read_bytes()


def write_bytes(folder: str, name: str, data: bytes) -> None:
    if not is_url(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, name).write_bytes(data)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, name)
        Path(local).write_bytes(data)
        storage_provider(folder).upload_file(local, join(folder, name))


def read_meta(folder: str) -> dict[str, Any] | None:
    """The folder's `vlmlab.json`, or None when there is none (not written, or not finished)."""
    try:
        return json.loads(read_bytes(folder, META_FILE))
    except (FileNotFoundError, OSError):
        return None
    except Exception as err:  # a remote store's "no such key" comes in the SDK's own exception types
        if "404" in str(err) or "NoSuchKey" in str(err) or "Not Found" in str(err):
            return None
        raise


def image_bytes(image: Any) -> bytes:
    """The encoded file of an image as records hold it: a path, or an HF image dict with bytes or a path."""
    if isinstance(image, dict):
        return image["bytes"] if image.get("bytes") is not None else Path(image["path"]).read_bytes()
    return Path(image).read_bytes()


def image_name(image: Any) -> str | None:
    return image.get("path") if isinstance(image, dict) else str(image)


def encode_item(record: Record, images: list[Any]) -> dict[str, Any]:
    """A LitData item: LitData needs the same structure for every item, so the images (any number) travel
    as one byte string, cut by the sizes kept in the record."""
    blobs = [image_bytes(image) for image in images]
    stored = dict(record)
    if "image" in stored:
        stored["image"] = [{"path": image_name(i), "nbytes": len(b)} for i, b in zip(images, blobs)]
    return {"record": json.dumps(stored, ensure_ascii=False), "images": b"".join(blobs)}


def decode_item(item: dict[str, Any]) -> Record:
    """The record of an item, its images as `{"bytes", "path"}` dicts (read like HF-stored images)."""
    record = json.loads(item["record"])
    if "image" in record:
        blob, start, images = item["images"], 0, []
        for image in record["image"]:
            images.append({"bytes": blob[start : start + image["nbytes"]], "path": image["path"]})
            start += image["nbytes"]
        record["image"] = images
    return record


def lengths_file(words: Sequence[int], images: Sequence[int], sizes: Sequence[tuple[int, int]]) -> bytes:
    """`lengths.npz`: each kept record's words and image count, and every image's (height, width) in order."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        words=np.asarray(words, dtype=np.int32),
        images=np.asarray(images, dtype=np.int16),
        sizes=np.asarray(sizes, dtype=np.int32).reshape(-1, 2),
    )
    return buffer.getvalue()


def remove_meta(folder: str) -> None:
    """Forget that a folder is finished (before it is written again)."""
    if not is_url(folder):
        Path(folder, META_FILE).unlink(missing_ok=True)
        return
    provider = storage_provider(folder)
    if provider.exists(join(folder, META_FILE)):
        provider.delete_file_or_directory(join(folder, META_FILE))


class ShardRecords(Sequence[Record]):
    """The records of an optimised split, read by index through LitData's `StreamingDataset` (which downloads
    a remote chunk into its cache when an item of it is first read; local chunks are read in place).

    The dataset is opened in each process on first read (a loader worker opens its own reader).
    `chunk_sizes` are the items per chunk in index order, for chunk-local sampling
    (`vlmlab.data.sampler.StreamingMixtureSampler`)."""

    def __init__(self, path: str, cache_dir: str | None = None, max_cache_size: str | None = None) -> None:
        self.path = path
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self.meta = read_meta(path)
        if self.meta is None:
            raise FileNotFoundError(
                f"{join(path, META_FILE)} does not exist: {path} is not a finished `vlmlab-data optimize` output; "
                "run `vlmlab-data optimize data=<preset> output=<folder or URL>` (again) or fix the path"
            )
        index = json.loads(read_bytes(path, INDEX_FILE))
        self.chunk_sizes = [int(chunk["chunk_size"]) for chunk in index["chunks"]]
        lengths = np.load(io.BytesIO(read_bytes(path, LENGTHS_FILE)))
        self.words, self.images, self.sizes = lengths["words"], lengths["images"], lengths["sizes"]
        self.image_offsets = np.concatenate([[0], np.cumsum(self.images, dtype=np.int64)])
        if sum(self.chunk_sizes) != len(self.words):
            raise ValueError(
                f"{path}: index.json holds {sum(self.chunk_sizes)} items but lengths.npz {len(self.words)}; "
                "the folder is damaged: write it again with `vlmlab-data optimize`"
            )
        self.fingerprint: str = self.meta["fingerprint"]  # of the input it was written from (a digest of the records)
        self._dataset: Any = None
        self._opened_in: int | None = None  # the process that opened it (a forked worker opens its own)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None, "_opened_in": None}

    def _streaming_dataset(self) -> Any:
        if self._dataset is None or self._opened_in != os.getpid():
            from litdata import StreamingDataset

            logging.getLogger("litdata").setLevel(logging.WARNING)  # two INFO lines per opening, in every worker
            dataset = StreamingDataset(self.path, cache_dir=self.cache_dir, max_cache_size=self.max_cache_size)
            # Whole chunks into the cache rather than one ranged read per item: the sampler reads chunk by chunk.
            read_whole_chunks(dataset)
            self._dataset, self._opened_in = dataset, os.getpid()
        return self._dataset

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        return decode_item(self._streaming_dataset()[int(index) % len(self)])

    def image_sizes(self, index: int) -> list[tuple[int, int]]:
        start, stop = self.image_offsets[index], self.image_offsets[index + 1]
        return [(int(h), int(w)) for h, w in self.sizes[start:stop]]

    def estimated_lengths(self, image_tokens: int | Callable[[tuple[int, int]], int]) -> SampleLengths:
        """`vlmlab.data.lengths.estimate_length` of every record, from `lengths.npz`; `image_tokens` is the
        tokens per image or a function of an image's (height, width) (AnyRes)."""
        if callable(image_tokens):
            tokens = np.array([sum(map(image_tokens, self.image_sizes(i))) for i in range(len(self))], dtype=np.int64)
        else:
            tokens = self.images.astype(np.int64) * image_tokens
        return lengths_from_counts(self.words, self.images, tokens)


def read_from_shards(cfg: DictConfig) -> None:
    """With `data.shards` set, point every split of every source at its `vlmlab-data optimize` output
    (`<shards>/<source>/<split>`, format `streaming`), in place. Applying it twice changes nothing."""
    shards = cfg.data.get("shards")
    if not shards:
        return
    for name, source in cfg.data.sources.items():
        with open_dict(source):
            source.format = "streaming"
            for split in ("train", "val", "test"):
                if source.get(split) is not None:
                    source[split] = join(str(shards), name, split)
