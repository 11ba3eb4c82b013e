"""Frozen-encoder feature cache: every training image's encoder output ([N, d], before the connector)
computed once, stored memory-mapped on disk, and read instead of the image in every epoch.

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
from vlmlab.models.encoders.base import VisionEncoder

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
    digest.update(f"{processor.mode}{processor.preprocessing}{dtype}{len(dataset)}".encode())
    for record in dataset.records:
        images = record_images(record) if isinstance(record, dict) else []
        digest.update(
            repr([(i.get("path"), len(i.get("bytes") or b"")) if isinstance(i, dict) else i for i in images]).encode()
        )
    return digest.hexdigest()[:16]


class _RecordImages(Dataset):
    """(index, the record's preprocessed images [k, C, H, W] or None, error or None), for the build."""

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
        return index, torch.stack(pixels) if pixels else None, None


class FeatureStore:
    """A built store: `get(index)` gives record `index`'s image features [k, N, d] (None when it has no
    image) and raises the record's `SampleError` where its images could not be read at build time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.features = np.load(folder / "features.npy", mmap_mode="r")  # (num_images, N, d)
        self.offsets = np.load(folder / "offsets.npy")  # (num_records + 1,)
        self.bad = {int(k): v for k, v in json.loads((folder / "bad.json").read_text()).items()}

    def get(self, index: int) -> torch.Tensor | None:
        if index in self.bad:
            raise SampleError(*self.bad[index])
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return torch.from_numpy(np.array(self.features[start:end], dtype=np.float32)) if end > start else None

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
        counts = [len(record_images(r)) if isinstance(r, dict) else 0 for r in dataset.records]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        shape = (int(offsets[-1]), encoder.num_patches, encoder.output_dim)
        features = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=DTYPES[dtype], shape=shape)
        bad: dict[int, tuple[str, str]] = {}
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
                good = [(index, pixels) for index, pixels, _ in items if pixels is not None]
                if not good:
                    continue
                out = encoder(torch.cat([p for _, p in good]).to(device)).float().cpu().numpy()  # (k, N, d)
                row = 0
                for index, pixels in good:
                    features[offsets[index] : offsets[index + 1]] = out[row : row + len(pixels)]
                    row += len(pixels)
        encoder.train(was_training)
        features.flush()
        np.save(folder / "offsets.npy", offsets)
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
    dtype = settings.get("dtype", "float32")
    key = cache_key(encoder, dataset, dtype)
    folder = Path(root) / f"{source}-{split}-{key}"
    if is_main and FeatureStore.open(folder, key) is None:
        FeatureStore.build(folder, key, encoder, dataset, dtype, settings.get("batch_size", 64))
    barrier()
    store = FeatureStore.open(folder, key)
    if store is None:
        raise FileNotFoundError(f"feature cache {folder} is missing or incomplete after its build")
    return store
