"""Frozen-encoder feature cache: the same training as without it, the encoder run once, a new store when it changes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.feature_cache import cache_key
from vlmlab.models.builder import build_vlm
from vlmlab.training.module import VLMTrainingModule
from vlmlab.training.stage import mixture_weights, stage_specs

STAGE = "curriculum.stages.instruct"  # encoder frozen, connector and LLM trained


def fit(compose_config, tmp_path: Path, cached: bool, overrides: list[str] = (), epochs: int = 1) -> dict:
    """Train the instruct stage (8 micro-batches an epoch); returns per-step losses, final weights, encoder
    calls by the end of each epoch and the stores."""
    cfg = compose_config(
        [
            f"{STAGE}.train.llm=full",
            f"{STAGE}.lr.llm=1e-3",
            f"data.feature_cache.enabled={cached}",
            f"data.feature_cache.dir={tmp_path / 'cache'}",
            "data.feature_cache.batch_size=16",
            *overrides,
        ]
    )
    spec = stage_specs(cfg)[1]
    L.seed_everything(0)
    model = build_vlm(cfg.model)
    calls = []
    model.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    datamodule = VLMDataModule.from_config(
        cfg.data,
        model,
        cfg.seed,
        mixture_weights(cfg, spec),
        spec.micro_batch_size,
        encoder_frozen=spec.train["encoder"] == "frozen",
    )
    losses: list[float] = []
    calls_per_epoch: list[int] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))
            assert (batch.get("image_features") is not None) == cached
            assert (batch["pixel_values"] is None) == cached

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            calls_per_epoch.append(len(calls))

    trainer = L.Trainer(
        max_epochs=epochs,
        accumulate_grad_batches=spec.accumulation(1),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        limit_train_batches=8,
        callbacks=[Record()],
    )
    calls.clear()  # the builder's shape probe
    trainer.fit(VLMTrainingModule(model, spec), datamodule=datamodule)
    stores = sorted(p.name for p in (tmp_path / "cache").glob("*")) if cached else []
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"losses": losses, "weights": weights, "calls": calls_per_epoch, "stores": stores, "model": model}


def test_cached_training_equals_training_on_images(compose_config, tmp_path: Path) -> None:
    plain = fit(compose_config, tmp_path, cached=False)
    cached = fit(compose_config, tmp_path, cached=True)
    assert len(cached["losses"]) == len(plain["losses"]) == 8
    assert cached["losses"] == pytest.approx(plain["losses"], rel=1e-5)
    for name, value in plain["weights"].items():
        torch.testing.assert_close(cached["weights"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert [name.split("-")[0] for name in cached["stores"]] == ["caption", "doc", "vqa"]  # the instruct mixture


def test_encoder_runs_once_and_the_store_is_reused(compose_config, tmp_path: Path) -> None:
    first = fit(compose_config, tmp_path, cached=True, epochs=2)
    build_calls = first["calls"][0]
    assert build_calls > 0 and first["calls"] == [build_calls, build_calls]  # nothing in epoch 2, nor in training
    again = fit(compose_config, tmp_path, cached=True)  # same encoder weights and settings: read from disk
    assert again["calls"] == [0] and again["stores"] == first["stores"]


def test_a_changed_layer_choice_or_weights_give_a_new_store(compose_config, tmp_path: Path) -> None:
    base = fit(compose_config, tmp_path, cached=True)
    assert len(base["stores"]) == 3  # one per source of the instruct mixture
    # The tiny ViT has 2 blocks: the penultimate one's features differ from the last one's.
    other_layer = fit(compose_config, tmp_path, cached=True, overrides=["model.encoder.feature_layer=-2"])
    assert other_layer["calls"][0] > 0  # rebuilt, not the old features
    assert len(other_layer["stores"]) == 6 and set(base["stores"]) < set(other_layer["stores"])
    model = base["model"]
    cfg = compose_config([f"data.feature_cache.dir={tmp_path / 'cache'}"])
    dataset = VLMDataModule.from_config(cfg.data, model, cfg.seed, {"vqa": 1.0}, 4).dataset("vqa", "train")
    key = cache_key(model.encoder, dataset, "float32")
    with torch.no_grad():
        next(model.encoder.parameters()).add_(1e-3)
    assert cache_key(model.encoder, dataset, "float32") != key
    assert cache_key(model.encoder, dataset, "float16") != cache_key(model.encoder, dataset, "float32")
