"""A trained model as an MLflow model: logged to a stage's run, registered in the Model Registry with the run's
metrics linked, and downloaded again from a `models:/<name>/<version>` URI.

The logged model is an MLflow `pyfunc` whose data is a vlmlab model folder (`model.safetensors`, `tokenizer/`,
`model.yaml`). MLflow loads it by calling `_load_pyfunc` of `LOADER_MODULE`, which answers with the platform's
own loading and generation code (the same as `vlmlab-generate`); this module names that module rather than
importing it, as tracking sits below inference. Its input is a pandas DataFrame with a `prompt` column and an
optional `image` column (an image file's bytes or a path to it; several in a list), its output one answer per
row, and the generation options are predict params (`params={"max_new_tokens": 16}`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.artifacts import download_artifacts
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from vlmlab.dependency_corners import mlflow_tracking_uri

LOADER_MODULE = "vlmlab.inference.pyfunc"  # defines _load_pyfunc(data_path); named, not imported (see above)
MODEL_URI_PREFIX = "models:/"
REGISTER_CHOICES = ("final", "every_stage")  # logger.register_model (or null: no model is logged)
# Generation options a caller may pass to predict, with the defaults of conf/generate.yaml (a test holds them equal).
PREDICT_PARAMS: dict[str, tuple[str, Any]] = {
    "max_new_tokens": ("long", 64),  # generation budget per answer, in tokens
    "do_sample": ("boolean", False),  # false: greedy decoding
    "temperature": ("double", 1.0),  # sampling only
    "top_p": ("double", 1.0),  # sampling only
    "stop": ("string", []),  # stop strings (a list): the answer is cut before the first
    "system": ("string", None),  # a system message in front of every conversation
    "batch_size": ("long", 8),  # rows generated together (left-padded), as vlmlab-generate's requests mode
    "seed": ("long", 0),  # seeds sampling
}
REQUIREMENTS = ("vlmlab", "torch", "transformers", "mlflow")  # pinned to the versions that logged the model


def _save_pyfunc(validate_serving_input: bool = True, **kwargs: Any) -> None:
    """`mlflow.pyfunc.save_model`, taking the `validate_serving_input` switch that `Model.log` reads from the
    flavor's arguments (MLflow's transformers flavor takes it too; pyfunc's own save_model refuses it)."""
    mlflow.pyfunc.save_model(**kwargs)


# The pyfunc flavor for `Model.log`, which can skip checking the input example by loading the model again and
# answering it: in the training process, after the last stage, that would hold a second copy of the model.
PYFUNC_FLAVOR = SimpleNamespace(__name__="mlflow.pyfunc", save_model=_save_pyfunc)


@dataclass(frozen=True)
class LoggedVersion:
    model_id: str  # the MLflow LoggedModel
    uri: str  # models:/<model_id>
    registered_name: str | None
    version: str | None  # its version in the registry, when registered


def is_model_uri(value: Any) -> bool:
    """A Model Registry or logged-model URI: models:/<name>/<version>, models:/<name>@<alias>, models:/<model_id>."""
    return isinstance(value, str) and value.startswith(MODEL_URI_PREFIX)


def model_signature() -> ModelSignature:
    params = [
        ParamSpec(name, kind, default, shape=(-1,) if isinstance(default, list) else None)
        for name, (kind, default) in PREDICT_PARAMS.items()
    ]
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("binary", "image", required=False)]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(params),
    )


def input_example() -> pd.DataFrame:
    """One request with an image (a small grey PNG's bytes), one without."""
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(png, format="PNG")
    return pd.DataFrame({"prompt": ["Describe the image.", "Say something."], "image": [png.getvalue(), None]})


def pip_requirements() -> list[str]:
    """The packages the model loads with, at the versions that logged it (vlmlab itself included: load it where
    vlmlab is installed). Listed, so that MLflow does not load the model in a subprocess to infer them."""
    pinned = []
    for package in REQUIREMENTS:
        try:
            pinned.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(package)
    return pinned


@contextmanager
def using_store(tracking_uri: str) -> Iterator[None]:
    """MLflow's fluent model logging and registration use the process's tracking URI: point it at this store for
    a while. (MLflow's helper unsets $MLFLOW_TRACKING_URI on the way out when no URI was set: kept as it was.)"""
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with mlflow_tracking_uri(tracking_uri):
            yield
    finally:
        if environment is not None:
            os.environ["MLFLOW_TRACKING_URI"] = environment


def log_model(
    tracking_uri: str,
    run_id: str,
    folder: Path,
    registered_name: str | None,
    step: int = 0,
    tags: Mapping[str, str] | None = None,
) -> LoggedVersion:
    """Log the vlmlab model folder `folder` as a pyfunc model of run `run_id` (the run's metrics linked to it)
    and, with `registered_name`, register it as a new version of that registered model. `tags` go on the
    logged model and the version."""
    client = MlflowClient(tracking_uri)
    with using_store(tracking_uri):
        info = Model.log(
            artifact_path=None,  # deprecated in MLflow 3 for `name`, but still a required argument
            name="model",
            flavor=PYFUNC_FLAVOR,
            run_id=run_id,
            loader_module=LOADER_MODULE,
            data_path=str(folder),
            signature=model_signature(),
            input_example=input_example(),
            pip_requirements=pip_requirements(),
            registered_model_name=registered_name,
            validate_serving_input=False,
            tags=dict(tags or {}),
            step=step,
        )
    link_run_metrics(client, run_id, info.model_id)
    version = info.registered_model_version
    return LoggedVersion(info.model_id, info.model_uri, registered_name, None if version is None else str(version))


def link_run_metrics(client: MlflowClient, run_id: str, model_id: str) -> None:
    """Link the latest value of each of the run's metrics to the logged model, so that the model's page shows
    them. Each is logged again with its own step and time, which the run's history already holds (MLflow keeps
    it once)."""
    latest = []
    for key in client.get_run(run_id).data.metrics:
        last = max(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        latest.append(Metric(key, last.value, last.timestamp, last.step, run_id=run_id, model_id=model_id))
    for start in range(0, len(latest), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=latest[start : start + 1000])


def add_model_output(client: MlflowClient, run_id: str, model_id: str, step: int = 0) -> None:
    """Show the logged model as an output of another run too (the curriculum's parent run: its Models column)."""
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step)])


def download_model(uri: str, tracking_uri: str | None, folder: Path) -> Path:
    """Download the logged model a `models:/` URI names into `folder`; returns the vlmlab model folder inside.
    A name, version or store that holds no such model is a ValueError that says which store was asked."""
    try:
        # A models:/ URI is resolved in the registry of the process's tracking URI, not of `tracking_uri`
        with using_store(tracking_uri) if tracking_uri else nullcontext():
            local = Path(download_artifacts(artifact_uri=uri, dst_path=str(folder), tracking_uri=tracking_uri))
    except MlflowException as err:
        store = tracking_uri or mlflow.get_tracking_uri()
        raise ValueError(f"checkpoint={uri}: {err.message} (looked up in the MLflow store {store})") from err
    flavor = Model.load(str(local)).flavors.get("python_function", {})
    if flavor.get("loader_module") != LOADER_MODULE or not flavor.get("data"):
        raise ValueError(f"{uri} is not a model logged by vlmlab (its MLmodel has no {LOADER_MODULE} data)")
    data = (local / flavor["data"]).resolve()
    if not data.is_relative_to(local.resolve()):
        raise ValueError(f"{uri}: its MLmodel points at {flavor['data']!r}, outside the model it was downloaded with")
    return data
