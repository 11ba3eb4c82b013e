"""`vlmlab-import`: a Hugging Face LLaVA or LLaVA-NeXT folder -> a vlmlab model folder plus model presets to
train from it."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vlmlab.cli.entry import hydra_command
from vlmlab.inference.loading import LoadedModel, save_model_folder
from vlmlab.interop.hf_llava import is_hf_llava_folder, vlm_from_hf_llava


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
    if not is_hf_llava_folder(source):
        raise ValueError(
            f"source={source} holds no transformers LLaVA (a config.json with model_type 'llava' or 'llava_next')"
        )
    if output.exists() and any(output.iterdir()) and not cfg.overwrite:
        raise ValueError(f"output={output} exists and is not empty; choose another folder or set overwrite=true")
    model, model_config, mode, anyres = vlm_from_hf_llava(source, cfg.chat_template)
    save_model_folder(LoadedModel(model, model_config, mode, str(source), Path(source), anyres), output)
    saved = OmegaConf.load(output / "model.yaml").model  # its llm.tokenizer is the saved tokenizer
    write_presets(OmegaConf.to_container(saved), output / "conf", cfg.name)
    conf = (output / "conf").resolve()
    tiles = ""
    if anyres is not None:
        grids = ",".join(f"[{r},{c}]" for r, c in anyres["grid_pinpoints"])
        tiles = f" model.image_newline=true 'data.anyres.grid_pinpoints=[{grids}]'"
    print(
        f"wrote {output}. Use it: vlmlab-generate checkpoint={output} image=... prompt=...\n"
        f"Train from it: vlmlab-train 'hydra.searchpath=[file://{conf}]' model/encoder={cfg.name} "
        f"model/connector=mlp2x_gelu model/llm={cfg.name} data.image_resize={mode}{tiles} init_from={output.resolve()}"
    )
    return output


main = hydra_command("vlmlab-import", "import", import_llava, user_errors=(ValueError, FileNotFoundError))

if __name__ == "__main__":
    main()
