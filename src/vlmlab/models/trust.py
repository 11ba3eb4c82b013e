"""Which `_target_`s a model config read from a folder may build: the trust boundary of `load_model`.

A run folder's `.hydra/config.yaml`, a model folder's `model.yaml` and a registered model's `model.yaml` may
come from someone else, and Hydra's `instantiate` calls whatever `_target_` they name (its own block list stops
`os.system`, not `pandas.read_pickle`). So such a config builds only vlmlab's model components and the targets
the user vouches for on the command line: the `_target_`s of the YAML files in the folders its
`hydra.searchpath` names (their own plug-ins), and `trusted_targets` (module or class prefixes; `"*"` trusts
every target, as transformers' `trust_remote_code` does). Anything else is refused before it is imported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vlmlab.errors import UsageError

# The modules of vlmlab's own model components (every model preset in conf/ builds from these), and the one
# function outside them that a preset calls: the text the tiny tokenizer is trained on.
OWN_PREFIXES = (
    "vlmlab.models.encoders.",
    "vlmlab.models.connectors.",
    "vlmlab.models.llms.",
    "vlmlab.models.text_towers.",
)
OWN_TARGETS = ("vlmlab.data.synthetic.tokenizer_corpus",)


def config_targets(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field, target) of every `_target_` in a config tree, outermost first."""
    if isinstance(node, DictConfig | dict):
        target = node.get("_target_")
        if target is not None:
            yield path or "<root>", str(target)
        for key, value in node.items():
            if key != "_target_":
                yield from config_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig | list | tuple):
        for k, value in enumerate(node):
            yield from config_targets(value, f"{path}[{k}]")


def is_trusted(target: str, trusted: Sequence[str]) -> bool:
    if target.startswith(OWN_PREFIXES) or target in OWN_TARGETS or "*" in trusted:
        return True
    return any(target == t or target.startswith(t.rstrip(".") + ".") for t in trusted)


def searchpath_targets(searchpath: Sequence[str]) -> list[str]:
    """The `_target_`s of the YAML files under the `file://` folders of a `hydra.searchpath`: the user's own."""
    found = []
    for entry in searchpath:
        if not str(entry).startswith("file://"):
            continue
        for file in Path(str(entry).removeprefix("file://")).rglob("*.yaml"):
            try:
                found += [target for _, target in config_targets(OmegaConf.load(file))]
            except Exception:  # not a config of the user's: it vouches for nothing
                continue
    return found


def check_targets(model_cfg: Any, source: str, trusted: Sequence[str] = ()) -> None:
    """Refuse, in one line, a model config from `source` that names a `_target_` outside what is trusted."""
    for field, target in config_targets(model_cfg):
        if not is_trusted(target, trusted):
            module = target.rsplit(".", 1)[0]
            raise UsageError(
                f"{source}: {field}._target_={target} is not a vlmlab model component, and a config read from a "
                f"folder builds nothing else (it could run code). If you wrote it, name its config folder with "
                f"hydra.searchpath=[file://...] or add trusted_targets=[{module}]"
            )
