"""`vlmlab-import`: a Hugging Face LLaVA, LLaVA-NeXT or Qwen2-VL folder -> a vlmlab model folder plus model presets
to train from it."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vlmlab.cli.entry import hydra_command
from vlmlab.inference.loading import LoadedModel, save_model_folder
from vlmlab.interop.hf_llava import is_hf_llava_folder, vlm_from_hf_llava
from vlmlab.interop.hf_qwen2_vl import is_hf_qwen2_vl_folder, vlm_from_hf_qwen2_vl


def write_presets(model_config: dict, conf: Path, name: str) -> list[Path]:
    """`conf/model/encoder/<name>.yaml` and `conf/model/llm/<name>.yaml`: with
    `hydra.searchpath=[file://<conf>]` they are model/* choices like the packaged ones."""
    files = []
    for part in ("encoder", "llm"):
        path = conf / "model" / part / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(model_config[part], path)
        files.append(path)
    return files


def import_llava(cfg: DictConfig) -> Path:
    """Everything `vlmlab-import` does after Hydra composed `cfg`; returns the folder written."""
    source, output = Path(cfg.source), Path(cfg.output)
    qwen2_vl = is_hf_qwen2_vl_folder(source)
    if not qwen2_vl and not is_hf_llava_folder(source):
        raise ValueError(
            f"source={source} holds no transformers LLaVA or Qwen2-VL (a config.json with model_type 'llava', "
            "'llava_next' or 'qwen2_vl')"
        )
    if output.exists() and any(output.iterdir()) and not cfg.overwrite:
        raise ValueError(f"output={output} exists and is not empty; choose another folder or set overwrite=true")
    if qwen2_vl:
        model, model_config = vlm_from_hf_qwen2_vl(source, cfg.chat_template)
        mode, anyres, connector = "resize", None, "identity"  # each image at its own shape: no resize mode applies
    else:
        model, model_config, mode, anyres = vlm_from_hf_llava(source, cfg.chat_template)
        connector = "mlp2x_gelu"
    save_model_folder(LoadedModel(model, model_config, mode, str(source), Path(source), anyres), output)
    saved = OmegaConf.load(output / "model.yaml").model  # its llm.tokenizer is the saved tokenizer
    write_presets(OmegaConf.to_container(saved), output / "conf", cfg.name)
    conf = (output / "conf").resolve()
    # Qwen2-VL has no connector to align: its curriculum starts at instruction tuning
    options = " curriculum.start_stage=instruct" if qwen2_vl else f" data.image_resize={mode}"
    if anyres is not None:
        grids = ",".join(f"[{r},{c}]" for r, c in anyres["grid_pinpoints"])
        options += f" model.image_newline=true 'data.anyres.grid_pinpoints=[{grids}]'"
    print(
        f"wrote {output}. Use it: vlmlab-generate checkpoint={output} image=... prompt=...\n"
        f"Train from it: vlmlab-train 'hydra.searchpath=[file://{conf}]' model/encoder={cfg.name} "
        f"model/connector={connector} model/llm={cfg.name}{options} init_from={output.resolve()}"
    )
    return output


main = hydra_command("vlmlab-import", "import", import_llava, user_errors=(ValueError, FileNotFoundError))

if __name__ == "__main__":
    main()
