"""A model component's config checked against the code it names, before anything is built.

Each part of `model` (encoder, connector, llm, text tower) is a `_target_` plus the arguments its YAML
gives. That the target can be imported, that it accepts those arguments with values of the types its
signature declares, and (for a connector) that it subclasses `Connector` and takes the dimensions vlmlab
passes, is checked here in milliseconds; Hydra would find most of it only while building, after the
encoder and a multi-GB LLM have loaded, and say less.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig
from omegaconf.errors import MissingMandatoryValue

from vlmlab.errors import UsageError
from vlmlab.models.connectors.base import Connector

CONNECTOR_ARGS = ("in_dim", "out_dim", "num_in_tokens")
HYDRA_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
PARTS = ("encoder", "connector", "llm", "text_tower")


def locate_target(target: str, field: str) -> Any:
    """The object a `_target_` names (a class, function or classmethod), or a UsageError saying why not."""
    parts = target.split(".")
    missing_module = None  # the longest module path that does not exist
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and module_name.startswith(err.name):
                missing_module = missing_module or err.name
                continue  # this path is not a module: try a shorter one
            raise UsageError(f"{field}._target_={target}: importing {module_name} failed: {err}") from err
        for depth, attribute in enumerate(parts[cut:]):
            if not hasattr(obj, attribute):
                if depth == 0 and missing_module is not None:
                    break  # `pkg.missing_module.Class`: say that the module is missing
                owner = ".".join(parts[: cut + depth])
                names = sorted(n for n, v in vars(obj).items() if inspect.isclass(v) and not n.startswith("_"))
                listed = ", ".join(names) or "none"
                raise UsageError(f"{field}._target_={target}: {owner} has no '{attribute}'; its classes: {listed}")
            obj = getattr(obj, attribute)
        else:
            return obj
        break
    raise UsageError(
        f"{field}._target_={target}: no module named '{missing_module or parts[0]}'. Is the folder that holds it "
        "on PYTHONPATH (e.g. PYTHONPATH=$PWD vlmlab-train ...)?"
    )


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value can be passed where `hint` is declared; types it cannot judge pass."""
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if isinstance(value, DictConfig) and "_target_" in value:
        return True  # built by Hydra first
    target = origin or hint
    if target is bool:
        return isinstance(value, bool)
    if target is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if target is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if target is str:
        return isinstance(value, str)
    if target in (list, tuple, Sequence):
        return isinstance(value, ListConfig | list | tuple)
    if target in (dict, Mapping):
        return isinstance(value, DictConfig | dict)
    return True


def _signature(obj: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """Parameters and resolvable type hints of a class's __init__ or a function."""
    function: Callable[..., Any] = obj.__init__ if inspect.isclass(obj) else obj
    parameters = dict(inspect.signature(function).parameters)
    parameters.pop("self", None)
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation only importable under TYPE_CHECKING: skip the type check
        hints = {}
    return parameters, hints


def check_arguments(node: DictConfig, field: str, filled_in: Sequence[str] = ()) -> Any:
    """The target of `node` accepts its options, each of the declared type; returns the target.
    `filled_in`: arguments vlmlab passes itself, which the YAML must not give."""
    target = locate_target(str(node._target_), field)
    parameters, hints = _signature(target)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = [p for p in parameters if p not in filled_in and parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    for key in node:
        key = str(key)
        if key in HYDRA_KEYS:
            continue
        if key in filled_in or (key not in parameters and not takes_any):
            raise UsageError(
                f"{field}.{key} is not an option of {node._target_} (its options: {', '.join(accepted) or 'none'}"
                + (f"; vlmlab fills in {', '.join(filled_in)}" if filled_in else "")
                + ")"
            )
        try:
            value = node[key]
        except MissingMandatoryValue as err:
            raise UsageError(f"{field}.{key} must be set (it is ??? in the preset): {field}.{key}=...") from err
        if key in hints and not _matches(value, hints[key]):
            raise UsageError(f"{field}.{key}={value!r} is not of the type {node._target_} takes: {hints[key]}")
    return target


def check_connector_config(node: DictConfig, field: str = "model.connector") -> None:
    """The connector class subclasses `Connector` and takes in_dim, out_dim and num_in_tokens (which vlmlab
    passes) besides the options its YAML gives."""
    connector_class = check_arguments(node, field, filled_in=CONNECTOR_ARGS)
    if not (inspect.isclass(connector_class) and issubclass(connector_class, Connector)):
        raise UsageError(
            f"{field}._target_={node._target_} is not a subclass of vlmlab.models.connectors.Connector; "
            "subclass it (see docs/extending.md)"
        )
    parameters, _ = _signature(connector_class)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = [a for a in CONNECTOR_ARGS if a not in parameters]
    if missing and not takes_any:
        raise UsageError(
            f"{field}._target_={node._target_}: __init__ must accept in_dim, out_dim and num_in_tokens "
            f"(vlmlab passes them; missing: {', '.join(missing)}) and take its own options from its YAML"
        )


def check_model_components(model_cfg: DictConfig) -> None:
    """Every part of the model config names code that exists and accepts its options."""
    for part in PARTS:
        node = model_cfg.get(part)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        if part == "connector":
            check_connector_config(node)
        else:
            check_arguments(node, f"model.{part}")
