"""A vlmlab model logged to MLflow, as `mlflow.pyfunc.load_model("models:/<name>/<version>")` loads it.

MLflow calls `_load_pyfunc` with the logged vlmlab model folder (`vlmlab.tracking.registry` names this module
in the model's MLmodel file). `predict` answers with the code `vlmlab-generate` uses (the same loading, prompt
formatting, batching and decoding), so the answers equal its answers on the same model and options:

    model = mlflow.pyfunc.load_model("models:/vlmlab-demo/1")
    requests = pd.DataFrame({"image": ["cat.png"], "prompt": ["What is on the mat?"]})
    model.predict(requests, params={"max_new_tokens": 16})  # ["A cat."]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from vlmlab.inference.answer import Assistant, GenerationOptions, Request, answer_batches
from vlmlab.inference.loading import load_model
from vlmlab.tracking.registry import PREDICT_PARAMS


class VLMPredictor:
    """Answers a DataFrame of requests: `prompt` (text; `<image>` marks where each image goes, in front when it
    names none) and, optionally, `image`: an image file's bytes, a path to one, a list of them, or None."""

    def __init__(self, folder: str | Path) -> None:
        loaded = load_model(folder)
        loaded.model.to("cuda" if torch.cuda.is_available() else "cpu")  # as vlmlab-generate's device=auto
        self.loaded = loaded

    def predict(self, model_input: pd.DataFrame, params: Mapping[str, Any] | None = None) -> list[str]:
        """One answer per row. `params`: the generation options of `PREDICT_PARAMS` (MLflow fills in the defaults
        the model's signature declares)."""
        options = {name: default for name, (_, default) in PREDICT_PARAMS.items()} | dict(params or {})
        generation = GenerationOptions(
            int(options["max_new_tokens"]),
            bool(options["do_sample"]),
            float(options["temperature"]),
            float(options["top_p"]),
            tuple(options["stop"] or ()),
        )
        assistant = Assistant(self.loaded.model, self.loaded.image_resize, options["system"], self.loaded.anyres)
        images = model_input["image"] if "image" in model_input else [None] * len(model_input)
        requests = [
            Request(str(prompt), image_list(image), f"row {row}")
            for row, (prompt, image) in enumerate(zip(model_input["prompt"], images))
        ]
        torch.manual_seed(int(options["seed"]))
        batches = answer_batches(assistant, requests, generation, int(options["batch_size"]))
        return [answer for batch in batches for answer in batch]


def image_list(cell: Any) -> list[str | Path | bytes]:
    """A DataFrame cell of the `image` column: nothing (None, NaN), one image, or several."""
    if cell is None or (isinstance(cell, float) and pd.isna(cell)):
        return []
    if isinstance(cell, str | Path | bytes):
        return [cell]
    return list(cell)


def _load_pyfunc(data_path: str) -> VLMPredictor:
    """MLflow's entry point for a model logged with `loader_module`: `data_path` is the vlmlab model folder."""
    return VLMPredictor(data_path)
