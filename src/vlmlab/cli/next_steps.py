"""What `vlmlab-train` prints when a run ends: the commands that use this run's model, each with a comment,
written so that copying a line runs it from the same folder (the scripts started as vlmlab-train was, the run's
paths relative to the working directory)."""

from __future__ import annotations

import shlex
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vlmlab.cli.entry import invocation, shown_path
from vlmlab.data.formats import read_split
from vlmlab.interop.hf_llava import check_fits_llava
from vlmlab.interop.hf_qwen2_vl import check_fits_qwen2_vl
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.training.curriculum import CurriculumOutcome
from vlmlab.training.stage import stage_specs

HEADER = "vlmlab-train: finished. Next, from this folder:"


def next_steps(cfg: DictConfig, run_dir: Path, outcome: CurriculumOutcome) -> str:
    """The block printed at the end of a run: a `# what it does` line above each command."""
    stage = run_dir / "stages" / stage_specs(cfg)[-1].name
    checkpoint = f"checkpoint={shown_path(stage)}"
    steps: list[tuple[str, list[str]]] = []
    if (run_dir / "test_metrics.json").is_file():
        comment = "score the model as this run scored it (its data, limit and generation settings)"
        steps.append((comment, [invocation("vlmlab-eval"), checkpoint]))
    example = example_from_test_split(cfg.data)
    if example is not None:
        image, question = example
        command = [invocation("vlmlab-generate"), checkpoint, f"image={shown_path(image)}", f"prompt={question}"]
        steps.append(("answer a question about one of the run's test images", command))
    steps.append(
        ("chat with it (/image PATH attaches an image, /quit or Ctrl-D ends)", [invocation("vlmlab-chat"), checkpoint])
    )
    export_format, why = export_format_of(outcome.model)
    output = f"output={shown_path(run_dir / 'export')}"
    steps.append((f"export it {why}", [invocation("vlmlab-export"), checkpoint, output, f"format={export_format}"]))
    lines = [HEADER]
    for comment, command in steps:
        lines += [f"  # {comment}", f"  {shlex.join(command)}"]
    if outcome.run_link is not None:
        uri = str(OmegaConf.select(cfg, "logger.tracking_uri"))
        if uri.startswith(("http://", "https://")):
            lines.append(f"  # the run in MLflow: {outcome.run_link}")
        else:
            lines.append(f"  # the run in MLflow: start its UI, then open {outcome.run_link}")
            lines.append(f"  {shlex.join([invocation('mlflow'), 'ui', '--backend-store-uri', uri])}")
    return "\n".join(lines)


def example_from_test_split(data: DictConfig) -> tuple[Path, str] | None:
    """The image and question of the first test record with one image (None when no source has one on disk)."""
    sources = OmegaConf.to_container(data.sources, resolve=True)
    for name, source in sources.items():
        if not source.get("test") or source.get("format") in ("hf", "streaming"):
            continue
        records = read_split(name, source, "test")
        for record in (records[i] for i in range(min(20, len(records)))):  # decodes only the records looked at
            images = record.get("image") or []
            turns = record.get("conversations") or []
            if len(images) == 1 and turns and Path(images[0]).is_file():
                question = turns[0]["value"].replace("<image>", "").strip()
                return Path(images[0]), question
    return None


def export_format_of(model: VisionLanguageModel | None) -> tuple[str, str]:
    """The format the model exports to (a Hugging Face LLaVA, LLaVA-NeXT or Qwen2-VL folder when it fits, else
    vlmlab's own) and the comment that says which."""
    if model is None:
        return "vlmlab", "in vlmlab's own format"
    if model.llm.uses_mrope:  # Qwen2-VL's language model: Qwen2-VL's format or none
        try:
            check_fits_qwen2_vl(model)
        except ValueError as err:
            return "vlmlab", f"in vlmlab's own format (not a Hugging Face Qwen2-VL: {first_reason(err)})"
        return "hf_qwen2_vl", "as a Hugging Face Qwen2-VL folder (transformers loads it)"
    next_ = model.image_newline is not None
    try:
        check_fits_llava(model, next_)
    except ValueError as err:
        return "vlmlab", f"in vlmlab's own format (not a Hugging Face LLaVA: {first_reason(err)})"
    name = "LLaVA-NeXT" if next_ else "LLaVA"
    return ("hf_llava_next" if next_ else "hf_llava"), f"as a Hugging Face {name} folder (transformers loads it)"


def first_reason(err: ValueError) -> str:
    """The first reason a `check_fits_*` refusal names ("...: reason one; reason two. Export it ...")."""
    return str(err).partition(": ")[2].split(";")[0].split(". ")[0]
