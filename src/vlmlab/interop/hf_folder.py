"""What the Hugging Face interops share: which model a saved folder holds, and a sub-config as plain fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def folder_model_type(path: Path) -> str | None:
    """The `model_type` of the transformers config.json in `path`; None when there is none."""
    config = path / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def config_fields(config: Any) -> dict[str, Any]:
    """A transformers (sub-)config's own fields, as a vlmlab model config holds them: what differs from the
    defaults, without the bookkeeping (version, architectures, name, dtype)."""
    fields = config.to_diff_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "dtype"):
        fields.pop(key, None)
    return fields
