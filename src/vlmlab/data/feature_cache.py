"""Frozen-encoder feature cache: every training image's encoder output ([N, d] per tile, before the
connector) computed once, stored memory-mapped on disk, and read instead of the image in every epoch.
Tiled images (`anyres`) store each tile's features and the image's grid row; the grid choices are part of
the key, so another `data.anyres` gives another store.

Valid only while the encoder does not change, so stages use it only when their encoder is frozen.
A store lives in `<dir>/<source>-<split>-<key>/`; the key hashes what decides the features: the
encoder's class, settings (layer choice, prefix tokens, ...) and weights, the image preprocessing
(resize mode, size, normalisation), the split's images, and the stored dtype. Anything else gives
another key, hence a new store; an old one is never read for a new encoder. `meta.json` is written
last, so a store whose build was interrupted is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlmlab.data.chat_format import SampleError
from vlmlab.data.conversation_dataset import ConversationDataset, record_images
from vlmlab.data.image_processing import image_size
from vlmlab.models.encoders.base import VisionEncoder
from vlmlab.models.image_layout import tile_count

DTYPES = {"float32": np.float32, "float16": np.float16}


def _settings(module: VisionEncoder) -> dict[str, str]:
    """The encoder's plain attributes (feature layers, prefix-token policy, preprocessing, ...)."""
    plain = (bool, int, float, str, list, tuple)
    return {k: repr(v) for k, v in sorted(vars(module).items()) if k != "training" and isinstance(v, plain)} | {
        "preprocessing": repr(getattr(module, "preprocessing", None))
    }


def cache_key(encoder: VisionEncoder, dataset: ConversationDataset, dtype: str) -> str:
    """Hash of everything that decides the stored features (see the module docstring)."""
    digest = hashlib.sha256()
    for module in encoder.modules():  # a fused encoder's parts too
        if isinstance(module, VisionEncoder):
            digest.update(f"{type(module).__qualname__}{_settings(module)}".encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    processor = dataset.image_processor
    digest.update(f"{processor.mode}{processor.preprocessing}{processor.tiling}{dtype}{len(dataset)}".encode())
    for record in dataset.records:
        images = record_images(record) if isinstance(record, dict) else []
        digest.update(
            repr([(i.get("path"), len(i.get("bytes") or b"")) if isinstance(i, dict) else i for i in images]).encode()
        )
    return digest.hexdigest()[:16]


def planned_grids(dataset: ConversationDataset, record: Any) -> list[tuple[int, int, int, int]]:
    """The grid row of each of a record's images, from the image headers (untiled: no file is opened)."""
    processor = dataset.image_processor
    images = record_images(record) if isinstance(record, dict) else []
    if processor.tiling is None:
        return [(0, 0, 0, 0)] * len(images)
    return [processor.grid(image_size(image, policy=dataset.image_policy)) for image in images]


class _RecordImages(Dataset):
    """(index, the record's preprocessed tiles [k, C, H, W] or None, error or None), for the build."""

    def __init__(self, dataset: ConversationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, tuple[str, str] | None]:
        record = self.dataset.records[index]
        try:
            pixels = [self.dataset.load_image(p) for p in record_images(record)] if isinstance(record, dict) else []
        except SampleError as err:
            return index, None, (err.reason, str(err))
        return index, torch.cat([p.pixels for p in pixels]) if pixels else None, None


class FeatureStore:
    """A built store: `get(index)` gives record `index`'s tile features [tiles, N, d] and image grid rows
    [k, 4] (None, None when it has no image) and raises the record's `SampleError` where its images could
    not be read at build time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.features = np.load(folder / "features.npy", mmap_mode="r")  # (num_tiles, N, d)
        self.offsets = np.load(folder / "offsets.npy")  # (num_records + 1,) into the tiles
        self.grids = np.load(folder / "grids.npy")  # (num_images, 4)
        self.image_offsets = np.load(folder / "image_offsets.npy")  # (num_records + 1,) into the images
        self.bad = {int(k): v for k, v in json.loads((folder / "bad.json").read_text()).items()}

    def get(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if index in self.bad:
            raise SampleError(*self.bad[index])
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        if end == start:
            return None, None
        first, last = int(self.image_offsets[index]), int(self.image_offsets[index + 1])
        features = torch.from_numpy(np.array(self.features[start:end], dtype=np.float32))
        return features, torch.from_numpy(np.array(self.grids[first:last], dtype=np.int64))

    @classmethod
    def open(cls, folder: Path, key: str) -> FeatureStore | None:
        meta = folder / "meta.json"
        if meta.is_file() and json.loads(meta.read_text()).get("key") == key:
            return cls(folder)
        return None

    @classmethod
    def build(
        cls,
        folder: Path,
        key: str,
        encoder: VisionEncoder,
        dataset: ConversationDataset,
        dtype: str = "float32",
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> FeatureStore:
        """Run the encoder (eval mode, no grad, on its device) over every record's images and store them."""
        if dtype not in DTYPES:
            raise ValueError(f"data.feature_cache.dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)
        bad: dict[int, tuple[str, str]] = {}
        plans: list[list[tuple[int, int, int, int]]] = []
        for index, record in enumerate(dataset.records):
            try:
                plans.append(planned_grids(dataset, record))
            except SampleError as err:
                bad[index] = (err.reason, str(err))
                plans.append([])
        counts = [sum(tile_count(g) for g in plan) for plan in plans]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        grids = np.zeros((sum(len(plan) for plan in plans), 4), dtype=np.int64)
        image_offsets = np.concatenate([[0], np.cumsum([len(plan) for plan in plans])]).astype(np.int64)
        shape = (int(offsets[-1]), encoder.num_patches, encoder.output_dim)
        features = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=DTYPES[dtype], shape=shape)
        device = next(encoder.parameters()).device
        was_training = encoder.training
        encoder.eval()
        loader = DataLoader(
            _RecordImages(dataset), batch_size=batch_size, num_workers=num_workers, collate_fn=lambda items: items
        )
        with torch.no_grad():
            for items in loader:
                for index, _, error in items:
                    if error is not None:
                        bad[index] = error
                good = [(index, pixels) for index, pixels, _ in items if pixels is not None and index not in bad]
                if not good:
                    continue
                out = encoder(torch.cat([p for _, p in good]).to(device)).float().cpu().numpy()  # (k, N, d)
                row = 0
                for index, pixels in good:
                    features[offsets[index] : offsets[index + 1]] = out[row : row + len(pixels)]
                    row += len(pixels)
        encoder.train(was_training)
        for index, plan in enumerate(plans):
            if plan:  # text-only and unreadable records have none
                grids[image_offsets[index] : image_offsets[index + 1]] = plan
        features.flush()
        np.save(folder / "offsets.npy", offsets)
        np.save(folder / "grids.npy", grids)
        np.save(folder / "image_offsets.npy", image_offsets)
        (folder / "bad.json").write_text(json.dumps(bad))
        (folder / "meta.json").write_text(json.dumps({"key": key, "shape": shape, "dtype": dtype}))
        return cls(folder)


def feature_store(
    root: str | Path,
    source: str,
    split: str,
    encoder: VisionEncoder,
    dataset: ConversationDataset,
    settings: dict[str, Any],
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> FeatureStore:
    """The split's store for this encoder: reused when its key matches, else built (by the main process;
    the others wait at `barrier` and then open it)."""
    dtype = settings["dtype"]
    key = cache_key(encoder, dataset, dtype)
    folder = Path(root) / f"{source}-{split}-{key}"
    if is_main and FeatureStore.open(folder, key) is None:
        FeatureStore.build(folder, key, encoder, dataset, dtype, settings["batch_size"])
    barrier()
    store = FeatureStore.open(folder, key)
    if store is None:
        raise FileNotFoundError(f"feature cache {folder} is missing or incomplete after its build")
    return store
