"""Hugging Face LLaVA export and import: a trained vlmlab model served by transformers gives the same
logits and generations; a transformers LLaVA imported into vlmlab gives the same logits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from tests.cli_in_process import BIN, InProcess
from tests.tiny_models import tiny_llama_config
from vlmlab.cli.generate import main as generate_main
from vlmlab.cli.import_llava import import_llava
from vlmlab.cli.import_llava import main as import_main
from vlmlab.inference.answer import Assistant
from vlmlab.inference.loading import LoadedModel, load_model, save_model_folder
from vlmlab.interop.hf_llava import check_fits_llava
from vlmlab.models.builder import build_vlm
from vlmlab.models.llms.chat_templates import CHAT_TEMPLATES
from vlmlab.models.weights import load_weights
from vlmlab.testing import run_command


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
        ).logits


def test_exported_model_gives_vlmlabs_logits_and_generations_in_transformers(
    demo_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    stage = demo_run / "stages" / "instruct"
    result = run_command([str(BIN / "vlmlab-export"), f"checkpoint={stage}", "output=llava"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    ours = load_model(stage)
    assistant = Assistant(ours.model, ours.image_resize)

    image_path = next((synth_root / "images" / "vqa" / "test").glob("*.png"))
    question = "How many shapes are there?"
    messages = [
        {"role": "user", "content": [{"type": "image", "path": str(image_path)}, {"type": "text", "text": question}]}
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    sample = assistant.encode([assistant.user_message(question, 1)], [assistant.load_image(image_path)])
    # The processor builds vlmlab's prompt token for token and its pixels (the same operations)
    assert inputs["input_ids"][0].tolist() == sample["input_ids"].tolist()
    assert (inputs["pixel_values"][0] - sample["pixel_values"][0]).abs().max() <= 1e-5

    assert (logits(llava, inputs) - logits(ours.model, inputs)).abs().max() <= 1e-4
    prompt_length = inputs["input_ids"].shape[1]
    for settings in ({"do_sample": False}, {"do_sample": True, "temperature": 1.5}):
        torch.manual_seed(0)
        expected = llava.generate(**inputs, max_new_tokens=8, **settings)[:, prompt_length:]
        torch.manual_seed(0)
        actual = ours.model.generate(
            inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], max_new_tokens=8, **settings
        )
        assert actual.tolist() == expected.tolist()


def tiny_llava(
    tokenizer, folder: Path, chat_template: str | None = CHAT_TEMPLATES["vicuna_v1"]
) -> LlavaForConditionalGeneration:
    """A random tiny LLaVA saved as a Hugging Face checkpoint: config, weights, tokenizer, processor."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = None  # the template, if any, is the processor's
    vision = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4
    )
    text = tiny_llama_config(tokenizer)
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_layer=[-3, -1],
            vision_feature_select_strategy="default",
        )
    ).eval()
    llava.save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(
        images,
        tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=chat_template,
        num_additional_image_tokens=1,
    ).save_pretrained(folder)
    return llava


def test_imported_llava_gives_its_logits_in_vlmlab_and_starts_a_curriculum(tokenizer, tmp_path: Path) -> None:
    llava = tiny_llava(tokenizer, tmp_path / "hf")
    image_id = llava.config.image_token_index
    input_ids = torch.tensor([[5, *[image_id] * 16, 9, 10, 11], [7, 8, 20, *[image_id] * 16, 21]])
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(2, 3, 32, 32),
    }
    expected = logits(llava, inputs)

    import_llava(
        OmegaConf.create(
            {
                "source": str(tmp_path / "hf"),
                "output": str(tmp_path / "vlm"),
                "name": "tiny",
                "chat_template": None,
                "overwrite": False,
            }
        )
    )
    imported = load_model(tmp_path / "vlm")  # as vlmlab-generate loads it
    assert imported.image_resize == "resize_crop"  # CLIP's shortest-edge resize and centre crop
    assert (logits(imported.model, inputs) - expected).abs().max() <= 1e-4
    # The curriculum's start: the model/* presets it wrote, with init_from= the folder's weights.
    presets = tmp_path / "vlm" / "conf" / "model"
    model_cfg = OmegaConf.create(
        {
            "encoder": OmegaConf.load(presets / "encoder" / "tiny.yaml"),
            "connector": OmegaConf.load("conf/model/connector/mlp2x_gelu.yaml"),
            "llm": OmegaConf.load(presets / "llm" / "tiny.yaml"),
        }
    )
    start = build_vlm(model_cfg).eval()
    load_weights(start, tmp_path / "vlm")
    assert (logits(start, inputs) - expected).abs().max() <= 1e-4
    assert start.llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "<s>A chat between"
    )


def test_a_model_llava_cannot_express_is_refused_and_saved_in_vlmlabs_format(tokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    llm = OmegaConf.load("conf/model/llm/tiny_llama.yaml")
    llm.config.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    llm.tokenizer = str(tmp_path / "tokenizer")
    model_cfg = OmegaConf.create(
        {
            "encoder": OmegaConf.load("conf/model/encoder/tiny_vit.yaml"),
            "connector": OmegaConf.load("conf/model/connector/linear.yaml"),
            "llm": llm,
        }
    )
    model = build_vlm(model_cfg).eval()
    with pytest.raises(ValueError, match="TimmVisionEncoder.*CLIP or SigLIP.*LinearConnector.*format=vlmlab"):
        check_fits_llava(model)
    save_model_folder(
        LoadedModel(model, OmegaConf.to_container(model_cfg), "letterbox", "test", tmp_path), tmp_path / "own"
    )
    reloaded = load_model(tmp_path / "own")
    assert reloaded.image_resize == "letterbox" and reloaded.source.endswith("model.yaml")
    ids = torch.tensor([[5, *[model.image_token_id] * model.num_image_tokens, 9]])
    size = model.encoder.preprocessing
    pixels = torch.randn(1, 3, size.height, size.width)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    assert torch.equal(logits(reloaded.model, inputs), logits(model, inputs))


def test_an_incomplete_llava_folder_is_named_with_what_it_lacks(
    tokenizer, tmp_path: Path, in_process: InProcess
) -> None:
    """The commands run in this process (their processes: tests/test_generate.py, tests/test_llava_next.py)."""
    tiny_llava(tokenizer, tmp_path / "hf", chat_template=None)
    generate = [str(BIN / "vlmlab-generate"), f"checkpoint={tmp_path / 'hf'}", "prompt=hi", "max_new_tokens=2"]
    refused = in_process(generate_main, generate, tmp_path)  # a processor and tokenizer without a chat template
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        f"vlmlab-generate: {tmp_path / 'hf'}: neither its processor nor its tokenizer has a chat template; give one "
        "with chat_template=<a name (vicuna_v1 for LLaVA-1.5, simple) or a Jinja string>"
    )
    answered = in_process(generate_main, [*generate, "chat_template=vicuna_v1"], tmp_path)
    assert answered.returncode == 0, answered.stderr[-3000:]

    for name in ("preprocessor_config.json", "processor_config.json", "tokenizer.json"):
        (tmp_path / "hf" / name).unlink(missing_ok=True)
    imported = in_process(
        import_main, [str(BIN / "vlmlab-import"), f"source={tmp_path / 'hf'}", f"output={tmp_path / 'vlm'}"], tmp_path
    )
    assert imported.returncode == 2 and "Traceback" not in imported.stderr, imported.stderr[-3000:]
    assert imported.stderr.strip().splitlines()[-1] == (
        f"vlmlab-import: {tmp_path / 'hf'} lacks an image processor (preprocessor_config.json) and a tokenizer "
        "(tokenizer.json or tokenizer.model or vocab.json); save them beside the model with "
        "AutoProcessor.from_pretrained(<the original>).save_pretrained(folder)"
    )
    assert not (tmp_path / "vlm").exists()
