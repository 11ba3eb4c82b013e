"""The error a user can fix (a wrong option, path or file named on the command line or in a config), and
the typed-schema check that raises it for a config node.

The commands report a `UsageError` as one line, `vlmlab-<command>: <what is wrong>; <the fix>`, and exit
with code 2 (the conventional code for a usage error), before anything loads where it can be found that
early. Any other exception is a fault of the program or the machine and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

USAGE_EXIT_CODE = 2


class UsageError(ValueError):
    """A mistake in the command line, the config or the files they name; the message says the fix."""


def check_types(node: DictConfig | dict[str, Any], schema: type, where: str, exclude: tuple[str, ...] = ()) -> None:
    """Merge `node` into the dataclass `schema` as OmegaConf does for structured configs: a value of the
    wrong type (`max_steps=abc`) or a key the schema does not have is a UsageError naming the field
    (`<where>.<key>`), the type it needs, or the fields it has. `exclude`: fields the node may not set."""
    fields = {f.name: f for f in dataclasses.fields(schema) if f.name not in exclude}
    unknown = sorted(str(k) for k in node if k not in fields)
    if unknown:
        raise UsageError(f"{where} has unknown field(s) {unknown}; valid fields: {sorted(fields)}")
    try:
        OmegaConf.merge(OmegaConf.structured(schema), node)
    except (ValidationError, ConfigKeyError) as err:
        key = str(err.full_key or "")
        field = fields.get(key.split(".")[0].split("[")[0])
        needs = f"; {where}.{key} takes {field.type}" if field is not None else ""
        raise UsageError(f"{where}.{key}: {str(err.msg).splitlines()[0]}{needs}") from err
