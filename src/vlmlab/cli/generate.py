"""`vlmlab-generate`: answer one prompt about images, or a JSONL file of requests, with a trained model."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress

from vlmlab.cli.common import load_from_command_line
from vlmlab.cli.entry import hydra_command
from vlmlab.data.image_processing import ImageLoadError
from vlmlab.inference.answer import Assistant, GenerationOptions, Request, answer_batches

SHOWN_ERRORS = 5


def generation_options(cfg: DictConfig) -> GenerationOptions:
    stop = [cfg.stop] if isinstance(cfg.stop, str) else list(cfg.stop or [])
    return GenerationOptions(cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, tuple(stop))


def image_list(image: Any) -> list[str]:
    """An image field: absent, one path, or a list of paths."""
    if image is None:
        return []
    return [image] if isinstance(image, str) else [str(i) for i in image]


def read_requests(path: Path, image_root: Path) -> list[dict[str, Any]]:
    """The requests of a JSONL file, each with its `images` resolved; every bad line is reported at once,
    by line number, before any generation starts."""
    if not path.is_file():
        raise FileNotFoundError(f"requests={path}: no such file")
    requests, errors = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append(f"{path} line {number}: not JSON ({err})")
            continue
        if not isinstance(request, dict) or not isinstance(request.get("prompt"), str):
            errors.append(f'{path} line {number}: a request is an object with a string "prompt"')
            continue
        images = [image_root / p for p in image_list(request.get("image", request.get("images")))]
        errors += [f"{path} line {number}: image {p} does not exist" for p in images if not p.is_file()]
        requests.append({**request, "id": request.get("id", number), "line": number, "images": images})
    if errors:
        more = f" (+{len(errors) - SHOWN_ERRORS} more)" if len(errors) > SHOWN_ERRORS else ""
        raise ValueError("; ".join(errors[:SHOWN_ERRORS]) + more)
    return requests


def answer_requests(
    assistant: Assistant, requests: Sequence[dict[str, Any]], options: GenerationOptions, output: Path, batch_size: int
) -> None:
    """Answer in batches, appending one JSON line per request to `output` as each batch finishes."""
    output.parent.mkdir(parents=True, exist_ok=True)
    prompts = [Request(r["prompt"], r["images"], f"requests line {r['line']}") for r in requests]
    with output.open("w") as out, Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("generating", total=len(requests))
        done = 0
        for answers in answer_batches(assistant, prompts, options, batch_size):
            for request, answer in zip(requests[done : done + len(answers)], answers):
                row = {k: v for k, v in request.items() if k not in ("images", "line")}
                out.write(json.dumps({**row, "answer": answer}) + "\n")
            out.flush()
            done += len(answers)
            progress.advance(task, len(answers))


def generate(cfg: DictConfig) -> list[str] | None:
    """Everything `vlmlab-generate` does after Hydra composed `cfg`; the answer in single mode."""
    if (cfg.requests is None) == (cfg.prompt is None):
        raise ValueError("give either prompt=... (and image=...) or requests=FILE.jsonl output=FILE.jsonl")
    if cfg.requests is not None and cfg.output is None:
        raise ValueError("requests=... needs output=FILE.jsonl for the answers")
    requests = None
    if cfg.requests is not None:
        requests = read_requests(Path(cfg.requests), Path(cfg.image_root or Path(cfg.requests).parent))
    else:
        missing = [p for p in image_list(cfg.image) if not (Path(cfg.image_root or ".") / p).is_file()]
        if missing:
            raise ImageLoadError("missing_image", f"image {Path(cfg.image_root or '.') / missing[0]} does not exist")
    torch.manual_seed(cfg.seed)
    loaded = load_from_command_line(cfg)
    assistant = Assistant(loaded.model, loaded.image_resize, cfg.system, loaded.anyres)
    options = generation_options(cfg)
    if requests is not None:
        answer_requests(assistant, requests, options, Path(cfg.output), cfg.batch_size)
        print(f"{len(requests)} answers in {cfg.output}", file=sys.stderr)
        return None
    images = [assistant.load_image(Path(cfg.image_root or ".") / p) for p in image_list(cfg.image)]
    sample = assistant.encode([assistant.user_message(cfg.prompt, len(images))], images)
    (answer,) = assistant.answer([sample], options)
    print(answer)
    return [answer]


main = hydra_command(
    "vlmlab-generate",
    "generate",
    generate,
    user_errors=(ValueError, FileNotFoundError),
    free_text=("prompt", "system", "image"),
)

if __name__ == "__main__":
    main()
