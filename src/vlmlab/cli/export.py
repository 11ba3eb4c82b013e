"""`vlmlab-export`: a trained model as a Hugging Face LLaVA, LLaVA-NeXT or Qwen2-VL folder, or in vlmlab's own
format."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from vlmlab.cli.common import load_from_command_line
from vlmlab.cli.entry import hydra_command
from vlmlab.inference.loading import save_model_folder
from vlmlab.interop.hf_llava import check_fits_llava, export_hf_llava
from vlmlab.interop.hf_qwen2_vl import check_fits_qwen2_vl, export_hf_qwen2_vl

FORMATS = ("hf_llava", "hf_llava_next", "hf_qwen2_vl", "vlmlab")


def export(cfg: DictConfig) -> Path:
    """Everything `vlmlab-export` does after Hydra composed `cfg`; returns the folder written."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format={cfg.format!r} is not one of {', '.join(FORMATS)}")
    output = Path(cfg.output)
    if output.exists() and any(output.iterdir()) and not cfg.overwrite:
        raise ValueError(f"output={output} exists and is not empty; choose another folder or set overwrite=true")
    loaded = load_from_command_line(cfg)
    if cfg.format == "vlmlab":
        save_model_folder(loaded, output)
        print(f"wrote {output} (vlmlab format): vlmlab-generate checkpoint={output} ...")
        return output
    if cfg.format == "hf_qwen2_vl":
        check_fits_qwen2_vl(loaded.model)  # before anything is written
        export_hf_qwen2_vl(loaded.model, output)
        print(
            f"wrote {output}: Qwen2VLForConditionalGeneration.from_pretrained('{output}') and "
            f"AutoProcessor.from_pretrained('{output}') load it"
        )
        return output
    next_ = cfg.format == "hf_llava_next"
    check_fits_llava(loaded.model, next_)  # before anything is written
    export_hf_llava(loaded.model, output, loaded.image_resize, loaded.anyres, next_)
    model_class = "LlavaNextForConditionalGeneration" if next_ else "LlavaForConditionalGeneration"
    print(
        f"wrote {output}: {model_class}.from_pretrained('{output}') and "
        f"AutoProcessor.from_pretrained('{output}') load it"
    )
    return output


main = hydra_command("vlmlab-export", "export", export, user_errors=(ValueError, FileNotFoundError))

if __name__ == "__main__":
    main()
