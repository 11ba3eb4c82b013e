"""A transformers image processor's recipe in vlmlab's terms: the `ImagePreprocessing` fields and the layout
(`data.image_resize`) that reproduce its pixels (checked against each processor, tests/test_preprocessing_fidelity.py).

| processor settings                                        | layout        | recipe                               |
|-----------------------------------------------------------|---------------|--------------------------------------|
| `size.shortest_edge` S, centre crop C (CLIP, DINOv2/Bit)   | `resize_crop` | C x C, `shortest_edge` S             |
| `size` H x W, no crop (SigLIP)                             | `resize`      | H x W                                |
| `do_pad` (LLaVA-1.5's pad to a square), S, C               | `letterbox`   | C x C, `shortest_edge` S             |
| `image_grid_pinpoints` (LLaVA-NeXT), S, C                  | `anyres`      | C x C tiles, `shortest_edge` S       |

Each also gives its interpolation (`resample`), mean, std and rescale factor.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoImageProcessor
from transformers.image_utils import PILImageResampling


def _size(value: Any) -> dict[str, int]:
    """A processor's `size` / `crop_size` (a SizeDict, a dict, or None) as a dict of the fields it sets."""
    if value is None:
        return {}
    items = value.items() if hasattr(value, "items") else vars(value).items()
    return {k: int(v) for k, v in items if v is not None}


def unreproducible(source: str, problem: str) -> ValueError:
    return ValueError(f"the image processor of {source} cannot be reproduced: {problem}")


def pixel_statistics(processor: Any, source: str) -> dict[str, Any]:
    """A transformers image processor's resize filter, mean, std and rescale factor, the fields every recipe takes
    from it (fixed-size `ImagePreprocessing`, native-resolution `PatchRecipe`); `source` names it in errors."""
    if not (processor.do_resize and processor.do_rescale and processor.do_normalize):
        raise unreproducible(source, "it skips resizing, rescaling or normalising")
    return {
        "mean": tuple(float(m) for m in processor.image_mean),
        "std": tuple(float(s) for s in processor.image_std),
        "interpolation": PILImageResampling(int(processor.resample)).name.lower(),
        "rescale_factor": float(processor.rescale_factor),
    }


def processor_recipe(processor: Any, source: str) -> tuple[dict[str, Any], str]:
    """(`ImagePreprocessing` fields, layout) of a transformers image processor; `source` names it in errors."""
    size, crop = _size(processor.size), _size(processor.crop_size if processor.do_center_crop else None)
    fields: dict[str, Any] = {**pixel_statistics(processor, source), "backend": "transformers"}
    problem = None
    if getattr(processor, "image_grid_pinpoints", None) or getattr(processor, "do_pad", False):
        tiled = bool(getattr(processor, "image_grid_pinpoints", None))
        # LLaVA-NeXT's tiles are `crop_size` whether it crops or not; a padded square is cropped only if asked
        side_from = _size(processor.crop_size) if tiled else crop
        side = side_from.get("height") or size.get("height") or size.get("shortest_edge")
        edge = size.get("shortest_edge") or size.get("height")
        if side_from.get("width", side) != side or size.get("width", edge) != edge:
            problem = f"it tiles or pads to a square but its size ({size}) or crop size ({side_from}) is not square"
        fields.update(height=side, width=side, shortest_edge=edge)
        layout = "anyres" if tiled else "letterbox"
    elif "shortest_edge" in size and crop:
        fields.update(height=crop["height"], width=crop["width"], shortest_edge=size["shortest_edge"])
        layout = "resize_crop"
    elif "height" in size and not crop:
        fields.update(height=size["height"], width=size["width"])
        layout = "resize"
    else:
        problem = f"vlmlab has no layout for size={size} with crop_size={crop or None}"
    if problem is not None:
        raise unreproducible(source, problem)
    return fields, layout


def saved_processor(pretrained: str) -> Any | None:
    """The image processor saved with a hub id or local folder (its preprocessor_config.json, read by
    `AutoImageProcessor`, which never runs a folder's code without `trust_remote_code`); None if it has none."""
    try:
        return AutoImageProcessor.from_pretrained(pretrained)
    except (OSError, ValueError):  # no processor file; a config naming no known processor
        return None


def checkpoint_recipe(pretrained: str) -> tuple[dict[str, Any], str] | None:
    """The recipe of the image processor saved with a hub id or local folder; None if it has none."""
    processor = saved_processor(pretrained)
    return None if processor is None else processor_recipe(processor, pretrained)
