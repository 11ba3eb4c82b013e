"""Qwen2-VL interop from the user's side: a transformers Qwen2-VL folder (a tiny random model saved with
`save_pretrained`, its processor and the published Qwen2-VL-Instruct chat template) imported with `vlmlab-import`
answers PNG files and chat messages as `Qwen2VLForConditionalGeneration` does (the same prompt ids, grids and pixels
from vlmlab's own pipeline, logits <= 1e-4, the same greedy tokens) on a batch mixing a one-image, a two-image and
a text-only prompt, at aspect ratios 30 x 200 and 200 x 30; exported back with `vlmlab-export format=hf_qwen2_vl`,
transformers gives vlmlab's logits and tokens. M-RoPE positions equal transformers' `get_rope_index` (5.24.0, the
pinned release), and packed rows give the padded rows' loss. The imported model trains from its printed command."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from tests.cli_in_process import BIN, InProcess
from tests.tiny_models import noise_pictures, tiny_vlm
from vlmlab.cli.export import main as export_main
from vlmlab.cli.generate import main as generate_main
from vlmlab.cli.import_llava import import_llava
from vlmlab.cli.train import main as train_main
from vlmlab.data.conversation_dataset import collate
from vlmlab.data.packing import collate_packed
from vlmlab.inference.answer import Assistant
from vlmlab.inference.loading import load_model
from vlmlab.interop.hf_qwen2_vl import check_fits_qwen2_vl
from vlmlab.models.builder import build_vlm
from vlmlab.models.llms.qwen2_vl_text import mrope_positions
from vlmlab.testing import TINY_OVERRIDES

# Qwen/Qwen2-VL-2B-Instruct's chat template (its chat_template.json), as published
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == "
    "'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
SIZES = {"wide": (30, 200), "tall": (200, 30), "square": (64, 64)}  # (height, width)
# One image, two images, text only: (content parts of the user's message)
PROMPTS = [
    [("image", "wide"), ("text", "Read it.")],
    [("image", "tall"), ("text", "Compare"), ("image", "square"), ("text", "with this one.")],
    [("text", "Say something long enough to pad the others.")],
]


def tiny_qwen2_vl(tokenizer, folder: Path) -> None:
    """A random tiny Qwen2-VL saved as a Hugging Face checkpoint: config, weights, tokenizer, processor."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = None  # the processor's
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    config = Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=48, num_heads=4, mlp_ratio=2, patch_size=14),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 2, 2], "rope_theta": 10000.0},
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    budget = dict(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**budget),
        video_processor=Qwen2VLVideoProcessor(**budget),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_TEMPLATE,
    ).save_pretrained(folder)


def pictures(folder: Path) -> dict[str, Path]:
    return noise_pictures(folder, SIZES)


def processor_batch(folder: Path, paths: dict[str, Path]) -> dict[str, torch.Tensor]:
    """The processor's left-padded batch of PROMPTS as chat messages with image files."""
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    messages = [
        [
            {
                "role": "user",
                "content": [
                    {"type": k, "path": str(paths[v])} if k == "image" else {"type": k, "text": v} for k, v in p
                ],
            }
        ]
        for p in PROMPTS
    ]
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True
    )


def vlmlab_batch(model, paths: dict[str, Path]) -> dict:
    """vlmlab's own left-padded prompt batch of PROMPTS: `<image>` placeholders, images read from the files."""
    assistant = Assistant(model, "resize")
    samples = []
    for parts in PROMPTS:
        images = [assistant.load_image(paths[v]) for k, v in parts if k == "image"]
        text = "".join("<image>" if k == "image" else v for k, v in parts)
        samples.append(assistant.encode([{"role": "user", "content": text}], images))
    return collate(samples, model.llm.tokenizer.pad_token_id, padding_side="left")


def exported_processor_answer(folder: Path, tokens: torch.Tensor) -> str:
    """The text of generated tokens, decoded by the folder's processor as a transformers user decodes them."""
    return AutoProcessor.from_pretrained(folder).decode(tokens, skip_special_tokens=True)


def vlmlab_logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(
            batch["input_ids"], batch["attention_mask"], batch["pixel_values"], image_grids=batch["image_grids"]
        ).logits


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> tuple[Path, Path, dict[str, Path], str]:
    folder = tmp_path_factory.mktemp("qwen2_vl")
    tiny_qwen2_vl(tokenizer, folder / "hf")
    options = {"source": str(folder / "hf"), "output": str(folder / "ours"), "name": "tiny_qwen"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # vlmlab-import's own process: tests/test_export.py
        import_llava(OmegaConf.create({**options, "chat_template": None, "overwrite": False}))
    return folder / "hf", folder / "ours", pictures(folder), printed.getvalue()


def test_imported_qwen2_vl_answers_as_transformers(imported: tuple) -> None:
    hf_folder, ours_folder, paths, _ = imported
    theirs = Qwen2VLForConditionalGeneration.from_pretrained(hf_folder).eval()
    inputs = processor_batch(hf_folder, paths)
    ours = load_model(ours_folder)  # as vlmlab-generate loads it
    batch = vlmlab_batch(ours.model, paths)
    assert batch["input_ids"].tolist() == inputs["input_ids"].tolist()  # <|vision_start|>, n x <|image_pad|>, ...
    assert batch["image_grids"].tolist() == inputs["image_grid_thw"].tolist() == [[1, 2, 14], [1, 14, 2], [1, 4, 4]]
    assert (batch["pixel_values"] - inputs["pixel_values"]).abs().max() <= 1e-5
    with torch.no_grad():
        expected = theirs(**inputs).logits
    real = inputs["attention_mask"].bool()
    assert (vlmlab_logits(ours.model, batch)[real] - expected[real]).abs().max() <= 1e-4
    prompt_length = inputs["input_ids"].shape[1]
    greedy = theirs.generate(**inputs, max_new_tokens=6, do_sample=False)[:, prompt_length:]
    assert ours.model.generate_from_batch(batch, max_new_tokens=6).tolist() == greedy.tolist()
    # The positions are what makes it Qwen2-VL: with 1-D positions the image rows' logits differ
    with torch.no_grad():
        embeds = ours.model.embed_inputs(batch["input_ids"], batch["pixel_values"], image_grids=batch["image_grids"])
        one_d = ours.model.llm.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    assert (one_d[:2][real[:2]] - expected[:2][real[:2]]).abs().max() > 1e-3


def test_exported_qwen2_vl_gives_vlmlabs_logits_and_tokens(
    imported: tuple, tmp_path: Path, in_process: InProcess
) -> None:
    _, ours_folder, paths, _ = imported
    export = [str(BIN / "vlmlab-export"), f"checkpoint={ours_folder}", "output=back", "format=hf_qwen2_vl"]
    result = in_process(export_main, export, tmp_path)  # its process: tests/test_export.py
    assert result.returncode == 0, result.stderr[-3000:]
    exported = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    inputs = processor_batch(tmp_path / "back", paths)
    ours = load_model(ours_folder).model
    batch = vlmlab_batch(ours, paths)
    assert batch["input_ids"].tolist() == inputs["input_ids"].tolist()
    assert (batch["pixel_values"] - inputs["pixel_values"]).abs().max() <= 1e-5
    with torch.no_grad():
        expected = exported(**inputs).logits
    real = inputs["attention_mask"].bool()
    assert (vlmlab_logits(ours, batch)[real] - expected[real]).abs().max() <= 1e-4
    prompt_length = inputs["input_ids"].shape[1]
    greedy = exported.generate(**inputs, max_new_tokens=6, do_sample=False)[:, prompt_length:]
    assert ours.generate_from_batch(batch, max_new_tokens=6).tolist() == greedy.tolist()
    # vlmlab-generate answers from the Hugging Face folder itself, as transformers does
    command = [str(BIN / "vlmlab-generate"), f"checkpoint={tmp_path / 'back'}", f"image={paths['wide']}"]
    answered = in_process(generate_main, [*command, "prompt=Read it.", "max_new_tokens=6"], tmp_path)
    assert answered.returncode == 0, answered.stderr[-3000:]
    expected = exported_processor_answer(tmp_path / "back", greedy[0])
    assert answered.stdout.strip().endswith(expected.strip()) and expected.strip()


def test_mrope_positions_equal_transformers_rope_index(imported: tuple) -> None:
    hf_folder, _, paths, _ = imported
    inputs = processor_batch(hf_folder, paths)
    theirs = Qwen2VLModel.get_rope_index(
        Qwen2VLForConditionalGeneration.from_pretrained(hf_folder).model,
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )[0]
    merged = inputs["image_grid_thw"] // torch.tensor([1, 2, 2])
    image_token = AutoProcessor.from_pretrained(hf_folder).image_token_id
    ours = mrope_positions(inputs["input_ids"], image_token, merged, inputs["attention_mask"])
    assert ours.tolist() == theirs.tolist()
    # frames, rows and columns differ at the image tokens: a 1-D or transposed placement would not pass
    assert (ours[0] != ours[1]).any() and (ours[1] != ours[2]).any()


def test_packed_rows_give_the_padded_rows_loss(imported: tuple) -> None:
    _, ours_folder, paths, _ = imported
    model = load_model(ours_folder).model
    assistant = Assistant(model, "resize")
    samples = []
    for parts in PROMPTS:
        images = [assistant.load_image(paths[v]) for k, v in parts if k == "image"]
        text = "".join("<image>" if k == "image" else v for k, v in parts)
        turns = [{"from": "human", "value": text}, {"from": "gpt", "value": "An answer of a few words."}]
        encoded = assistant.formatter.encode(turns, [model.image_layout.count(i.grid) for i in images])
        samples.append(
            {
                "input_ids": encoded.input_ids,
                "labels": encoded.labels,
                "pixel_values": torch.cat([i.pixels for i in images]) if images else None,
                "image_grids": torch.tensor([i.grid for i in images]) if images else None,
                "id": str(len(samples)),
                "task": "qa",
            }
        )
    pad = model.llm.tokenizer.pad_token_id
    padded, packed = collate(samples, pad), collate_packed(samples, pad, None)
    assert packed["input_ids"].shape[0] == 1  # all three samples in one row
    with torch.no_grad():
        expected = model.batch_loss(padded)
        torch.testing.assert_close(model.batch_loss(packed), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.batch_loss(packed, loss_chunk_size=16), expected, atol=1e-5, rtol=0)


def test_the_imported_model_trains_from_its_printed_command(
    imported: tuple, synth_root: Path, tmp_path: Path, in_process: InProcess
) -> None:
    """The command `vlmlab-import` printed, shrunk: instruction tuning only (Qwen2-VL has no connector to align),
    LoRA on the tower and on the language model, packed rows with a loader worker, then the test split scored; the
    trained stage exports back to transformers."""
    _, ours_folder, _, printed = imported
    command = printed.split("Train from it: ", 1)[1].split()
    assert "model/connector=identity" in command and "curriculum.start_stage=instruct" in command
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("model.llm.")]
    train = [str(BIN / "vlmlab-train"), *[c.strip("'") for c in command[1:]], *tiny, f"data.root={synth_root}"]
    settings = ("train.encoder=lora", "train.llm=lora", "lora.r=4", "lr.encoder=1e-3")
    lora = [f"curriculum.stages.instruct.{k}" for k in settings]
    train += [*lora, "data.packing=true", "data.num_workers=1"]
    trained = in_process(train_main, [*train, "hydra.run.dir=run"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "test_metrics.json").is_file()
    stage = tmp_path / "run" / "stages" / "instruct"
    for part in ("encoder", "llm"):
        assert (stage / "adapters" / part / "adapter_model.safetensors").is_file()
    export = [str(BIN / "vlmlab-export"), f"checkpoint={stage}", "output=back", "format=hf_qwen2_vl"]
    assert "# export it as a Hugging Face Qwen2-VL folder" in trained.stdout  # what the run's end suggests
    exported = in_process(export_main, export, tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    before = Qwen2VLForConditionalGeneration.from_pretrained(ours_folder.parent / "hf").state_dict()
    after = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "back").state_dict()
    for name in ("model.visual.blocks.0.attn.qkv.weight", "model.language_model.layers.0.self_attn.q_proj.weight"):
        assert not torch.equal(before[name], after[name])  # the merged adapters changed both parts
    # The align stage would train the connector, which Qwen2-VL does not have: refused by name
    aligned = in_process(train_main, [*train, "curriculum.start_stage=align", "hydra.run.dir=align"], tmp_path)
    assert aligned.returncode != 0 and "stage 'align' trains nothing" in aligned.stderr


def test_what_qwen2_vl_cannot_express_is_refused(imported: tuple, tokenizer) -> None:
    with pytest.raises(ValueError, match="Qwen2VLVisionEncoder.*connector is MLPConnector.*LLM is LlamaForCausalLM"):
        check_fits_qwen2_vl(tiny_vlm(tokenizer))
    # its language model places image tokens on their grids: a fixed-size encoder is refused when built
    presets = imported[1] / "conf" / "model"
    parts = {"encoder": Path("conf/model/encoder/tiny_vit.yaml"), "connector": Path("conf/model/connector/linear.yaml")}
    model_cfg = OmegaConf.create({part: OmegaConf.load(path) for part, path in parts.items()})
    model_cfg.llm = OmegaConf.load(presets / "llm" / "tiny_qwen.yaml")
    with pytest.raises(ValueError, match="takes M-RoPE positions .* needs a native-resolution encoder"):
        build_vlm(model_cfg)
