"""Faithful to the checkpoints users bring: from PNG files and chat messages, vlmlab's pixels and prompt ids
are the checkpoint's own processor's, its logits and greedy answers transformers', and an import exported
again gives back the processor it came with.

The references run in this process: transformers 5.24.0 and timm 1.0.31 (constraints.txt; both releases are
tags on their projects' default branches): transformers' image processors with their default (torchvision)
backend through `AutoImageProcessor`/`AutoProcessor`, `processor.apply_chat_template(tokenize=True)`,
`Llava(Next)ForConditionalGeneration`; timm's eval transform through `timm.data.create_transform`.
The checkpoints are tiny and random, saved with `save_pretrained`: a LLaVA of a CLIP tower and a Llama whose
byte-level BPE tokenizer adds BOS (the llava-hf/llava-1.5 chat template, which holds no BOS), and a
LLaVA-NeXT of a SigLIP tower and a Qwen2 whose tokenizer adds nothing (a ChatML template of content parts).
"""

from __future__ import annotations

import copy
import json
import math
import re
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import processors
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    BitImageProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from tests.cli_in_process import BIN, InProcess
from vlmlab.cli.generate import main as generate_main
from vlmlab.data.chat_format import IGNORE_INDEX
from vlmlab.data.conversation_dataset import collate
from vlmlab.data.image_processing import ImageProcessor, image_processor_for, read_image
from vlmlab.inference.answer import Assistant
from vlmlab.inference.loading import load_model, save_model_folder
from vlmlab.interop.hf_llava import batch_from_processor, export_hf_llava
from vlmlab.models.encoders import HFVisionEncoder, ImagePreprocessing, TimmVisionEncoder
from vlmlab.models.encoders.hf_preprocessing import processor_recipe

README = Path(__file__).parents[1] / "docs" / "using-a-model.md"  # the manual's page that holds the snippet
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]
SIZES = {"wide": (22, 90), "tall": (100, 24), "squarish": (45, 50), "odd": (37, 31)}  # (height, width)
# llava-hf/llava-1.5-7b-hf's chat_template.json: content parts, images first, no BOS, "USER: " / "ASSISTANT: "
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# A ChatML template of content parts, each image's placeholder where the user put it
CHATML_PARTS_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NEXT_GRIDS = [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]]


def pngs(folder: Path) -> dict[str, Path]:
    """Noisy PNG files of odd sizes and aspect ratios, and a half-transparent one (its colours behind alpha)."""
    paths = {}
    for k, (name, (height, width)) in enumerate(SIZES.items()):
        pixels = torch.randint(
            0, 256, (height, width, 3), generator=torch.Generator().manual_seed(k), dtype=torch.uint8
        )
        paths[name] = folder / f"{name}.png"
        Image.fromarray(pixels.numpy()).save(paths[name])
    rgba = torch.randint(0, 256, (33, 61, 4), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    rgba[..., 3] = torch.where(rgba[..., 3] > 128, 255, 0).to(torch.uint8)
    paths["transparent"] = folder / "transparent.png"
    Image.fromarray(rgba.numpy(), "RGBA").save(paths["transparent"])
    return paths


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return pngs(tmp_path_factory.mktemp("pictures"))


def bpe_tokenizer(tokenizer: PreTrainedTokenizerFast, adds_bos: bool, extra: tuple[str, ...] = ()):
    """The session's byte-level BPE, made to add BOS like Llama's (or nothing, like Qwen2's), with `<image>`."""
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    if adds_bos:
        bos = [(tokenizer.bos_token, tokenizer.bos_token_id)]
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=bos
        )
    special = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    rebuilt = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    rebuilt.add_special_tokens({"additional_special_tokens": ["<image>", *extra]})
    return rebuilt


# --- 1. pixels: the checkpoint's processor, through vlmlab's own pipeline from PNG files ---------------------

HUB_ENCODERS = {  # a tower saved with its processor, as a hub encoder is; the layout its processor uses
    "clip": (
        CLIPVisionModel(CLIPVisionConfig(image_size=36, patch_size=6, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2)),
        CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 36, "width": 36}),
        "resize_crop",
    ),
    "siglip": (
        SiglipVisionModel(SiglipVisionConfig(image_size=30, patch_size=6, hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2)),
        SiglipImageProcessor(size={"height": 30, "width": 30}),
        "resize",
    ),
    "dinov2": (  # DINOv2's processor: the short side to 256/224 of the crop, ImageNet statistics
        Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2)),
        BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
        "resize_crop",
    ),
}  # fmt: skip


def max_difference(ours: ImageProcessor, theirs, paths: dict[str, Path], tiled: bool = False) -> float:
    worst = 0.0
    for path in paths.values():
        expected = theirs(images=str(path), return_tensors="pt")["pixel_values"][
            0
        ]  # the file, as a chat message names it
        actual = ours(read_image(path)).pixels
        actual, expected = (actual, expected[: len(actual)]) if tiled else (actual[0], expected)
        assert actual.shape == expected.shape, path
        worst = max(worst, (actual - expected).abs().max().item())
    return worst


@pytest.mark.parametrize("family", sorted(HUB_ENCODERS))
def test_a_hub_encoders_pixels_are_its_processors(family: str, pictures: dict[str, Path], tmp_path: Path) -> None:
    tower, processor, layout = HUB_ENCODERS[family]
    tower.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    encoder = HFVisionEncoder(family, pretrained=str(tmp_path))
    assert encoder.native_layout == layout and encoder.preprocessing.interpolation == "bicubic"
    ours = image_processor_for(encoder.preprocessing, layout)
    assert max_difference(ours, AutoImageProcessor.from_pretrained(tmp_path), pictures) <= 1e-5
    # vlmlab's former recipe (bilinear, float) was 0.1-0.2 away: the check sees a different filter
    bilinear = ImageProcessor(
        ImagePreprocessing(**{**vars(encoder.preprocessing), "interpolation": "bilinear"}), layout
    )
    assert max_difference(bilinear, AutoImageProcessor.from_pretrained(tmp_path), pictures) > 0.01


LLAVA_PROCESSORS = {  # LLaVA-1.5 (llava-hf: CLIP's processor; `pad`: LlavaImageProcessor) and LLaVA-NeXT
    "llava_15": CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    "llava_15_pad": LlavaImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                        do_pad=True),
    "llava_next": LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                          image_grid_pinpoints=[[32 * r, 32 * c] for r, c in NEXT_GRIDS]),
    "llava_next_margin": LlavaNextImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                                 image_grid_pinpoints=[[32 * r, 32 * c] for r, c in NEXT_GRIDS],
                                                 image_mean=HALF, image_std=HALF),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(LLAVA_PROCESSORS))
def test_a_llava_processors_pixels_are_reproduced(name: str, pictures: dict[str, Path], tmp_path: Path) -> None:
    LLAVA_PROCESSORS[name].save_pretrained(tmp_path)
    theirs = AutoImageProcessor.from_pretrained(tmp_path)
    fields, layout = processor_recipe(theirs, name)  # what vlmlab-import reads from the folder
    assert layout == {"llava_15": "resize_crop", "llava_15_pad": "letterbox"}.get(name, "anyres")
    ours = image_processor_for(ImagePreprocessing(**fields), layout, {"grid_pinpoints": NEXT_GRIDS})
    assert max_difference(ours, theirs, pictures, tiled=layout == "anyres") <= 1e-5


def test_a_timm_encoders_pixels_are_timms_eval_transform(pictures: dict[str, Path], tmp_path: Path) -> None:
    name, shape = "vit_tiny_patch16_224.augreg_in21k_ft_in1k", dict(patch_size=16, embed_dim=32, depth=2, num_heads=2)
    weights = tmp_path / "weights.safetensors"  # a checkpoint file: its pretrained config applies (bicubic, 0.9)
    save_file(timm.create_model(name, pretrained=False, num_classes=0, img_size=48, **shape).state_dict(), weights)
    encoder = TimmVisionEncoder(name, pretrained=True, checkpoint_path=str(weights), image_size=48, model_kwargs=shape)
    config = {**timm.data.resolve_model_data_config(encoder.model), "input_size": (3, 48, 48)}
    assert (config["interpolation"], config["crop_pct"], config["crop_mode"]) == ("bicubic", 0.9, "center")
    assert encoder.preprocessing.shortest_edge == math.floor(48 / 0.9)
    transform = timm.data.create_transform(**config)
    ours = image_processor_for(encoder.preprocessing, "resize_crop")
    for path in pictures.values():
        image = read_image(path)  # timm's transform takes RGB images; vlmlab composites transparency onto white
        assert (ours(image).pixels[0] - transform(image)).abs().max() <= 1e-5, path
    random = TimmVisionEncoder(name, image_size=48, model_kwargs=shape)  # no checkpoint: vlmlab's own default
    assert (random.preprocessing.interpolation, random.preprocessing.backend) == ("bilinear", "transformers")


# --- 2-4. tiny llava-hf-style checkpoints: prompts, logits, generations, export --------------------------------


def save_llava(folder: Path, tokenizer, vision, text, processor, template: str, next_: bool = False) -> Path:
    """A random LLaVA (or LLaVA-NeXT) saved as a hub checkpoint with its processor and chat template."""
    torch.manual_seed(0)
    fields = dict(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="full" if isinstance(vision, SiglipVisionConfig) else "default",
    )
    if next_:
        model = LlavaNextForConditionalGeneration(
            LlavaNextConfig(**fields, image_grid_pinpoints=processor.image_grid_pinpoints)
        )
        with torch.no_grad():
            model.model.image_newline.normal_()
    else:
        model = LlavaForConditionalGeneration(LlavaConfig(**fields))
    model.eval().save_pretrained(folder)
    processor_class = LlavaNextProcessor if next_ else LlavaProcessor
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = None  # the template is the processor's
    processor_class(
        processor,
        tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=fields["vision_feature_select_strategy"],
        chat_template=template,
        num_additional_image_tokens=1 if isinstance(vision, CLIPVisionConfig) else 0,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """LLaVA-1.5 as llava-hf publishes it: CLIP tower, CLIP's processor (bicubic, the short side to 44 px, a 40 px
    centre crop), a Llama whose tokenizer adds BOS, the llava-1.5 chat template."""
    llama_tokenizer = bpe_tokenizer(tokenizer, adds_bos=True)
    vision = CLIPVisionConfig(
        image_size=40, patch_size=10, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    ids = {f"{k}_token_id": getattr(llama_tokenizer, f"{k}_token_id") for k in ("pad", "bos", "eos")}
    text = LlamaConfig(vocab_size=len(llama_tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, **ids)  # fmt: skip
    processor = CLIPImageProcessor(size={"shortest_edge": 44}, crop_size={"height": 40, "width": 40})
    return save_llava(tmp_path_factory.mktemp("llava"), llama_tokenizer, vision, text, processor, LLAVA_15_TEMPLATE)


@pytest.fixture(scope="module")
def llava_next_folder(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """LLaVA-NeXT of a SigLIP tower (bicubic, 0.5 statistics, shortest edge 34 then 30 px tiles) and a Qwen2 whose
    tokenizer adds no BOS, a ChatML template of content parts."""
    qwen_tokenizer = bpe_tokenizer(tokenizer, adds_bos=False, extra=("<|im_start|>", "<|im_end|>"))
    vision = SiglipVisionConfig(
        image_size=30, patch_size=6, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    text = Qwen2Config(vocab_size=len(qwen_tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=qwen_tokenizer.pad_token_id,
                       eos_token_id=qwen_tokenizer.convert_tokens_to_ids("<|im_end|>"))  # fmt: skip
    processor = LlavaNextImageProcessor(
        size={"shortest_edge": 34},
        crop_size={"height": 30, "width": 30},
        image_mean=HALF,
        image_std=HALF,
        image_grid_pinpoints=[[30 * r, 30 * c] for r, c in NEXT_GRIDS],
    )
    folder = tmp_path_factory.mktemp("llava_next")
    return save_llava(folder, qwen_tokenizer, vision, text, processor, CHATML_PARTS_TEMPLATE, next_=True)


REQUESTS = [  # (prompt, images) as vlmlab-generate takes them: one image, two images, text only
    ("What is in the picture?", ["wide"]),
    ("<image> or <image>: which is brighter?", ["tall", "transparent"]),
    ("Say something long enough to pad the others.", []),
]


def hf_messages(prompt: str, images: list[str]) -> list[dict]:
    """The user's chat messages for transformers: the images where the prompt puts them, else in front."""
    if "<image>" not in prompt:
        return [{"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": prompt}]}]
    parts, pieces = [], prompt.split("<image>")
    for k, piece in enumerate(pieces):
        if piece.strip():
            parts.append({"type": "text", "text": piece.strip()})
        if k < len(images):
            parts.append({"type": "image"})
    return [{"role": "user", "content": parts}]


def with_paths(messages: list[dict], images: list[str], paths: dict[str, Path]) -> list[dict]:
    names = iter(images)
    for part in messages[0]["content"]:
        if part["type"] == "image":
            part["path"] = str(paths[next(names)])
    return messages


def transformers_inputs(folder: Path, paths: dict[str, Path]) -> dict[str, torch.Tensor]:
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    conversations = [with_paths(hf_messages(p, names), names, paths) for p, names in REQUESTS]
    return processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )


def vlmlab_batch(folder: Path, paths: dict[str, Path]) -> tuple[dict, object]:
    """vlmlab-generate's own path: the folder loaded, each request's PNG files read and its prompt formatted."""
    loaded = load_model(folder)
    assistant = Assistant(loaded.model, loaded.image_resize, anyres=loaded.anyres)
    samples = [
        assistant.encode([assistant.user_message(prompt, len(names))], [assistant.load_image(paths[n]) for n in names])
        for prompt, names in REQUESTS
    ]
    return collate(samples, assistant.tokenizer.pad_token_id, padding_side="left"), loaded


@pytest.mark.parametrize("checkpoint", ["llava", "llava_next"])
def test_from_png_files_and_messages_vlmlab_is_transformers(
    checkpoint: str, llava_folder: Path, llava_next_folder: Path, pictures: dict[str, Path]
) -> None:
    folder = llava_folder if checkpoint == "llava" else llava_next_folder
    model_class = LlavaForConditionalGeneration if checkpoint == "llava" else LlavaNextForConditionalGeneration
    theirs = model_class.from_pretrained(folder).eval()
    inputs = transformers_inputs(folder, pictures)
    ours, loaded = vlmlab_batch(folder, pictures)

    assert ours["input_ids"].tolist() == inputs["input_ids"].tolist()  # BOS, template, image tokens, padding
    assert ours["attention_mask"].tolist() == inputs["attention_mask"].tolist()
    if checkpoint == "llava":
        assert (
            int(ours["input_ids"][0, (ours["attention_mask"][0] == 0).sum()]) == loaded.model.llm.tokenizer.bos_token_id
        )
    theirs_as_ours = batch_from_processor(inputs, loaded.anyres)
    assert (ours["pixel_values"] - theirs_as_ours["pixel_values"]).abs().max() <= 1e-5

    with torch.no_grad():
        expected = theirs(**inputs).logits
        actual = loaded.model(
            **{k: v for k, v in ours.items() if k in ("input_ids", "attention_mask", "pixel_values", "image_grids")}
        ).logits
    keep = inputs["attention_mask"].bool()
    assert (actual[keep] - expected[keep]).abs().max() <= 1e-4
    prompt_length = inputs["input_ids"].shape[1]
    greedy = theirs.generate(**inputs, max_new_tokens=6, do_sample=False)[:, prompt_length:]
    assert loaded.model.generate_from_batch(ours, max_new_tokens=6).tolist() == greedy.tolist()


def test_training_labels_cover_exactly_the_answer(llava_folder: Path, pictures: dict[str, Path]) -> None:
    """The ids of a whole conversation are the processor's, and the answer-only labels are the tokens that
    transformers' own assistant mask marks (the template's `{% generation %}` span)."""
    loaded = load_model(llava_folder)
    formatter = Assistant(loaded.model, loaded.image_resize).formatter
    question, answer = "What colour is the square?", "a dark red"
    encoded = formatter.encode(
        [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
        image_tokens=[loaded.model.num_image_tokens],
    )
    processor = AutoProcessor.from_pretrained(llava_folder)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "path": str(pictures["wide"])}, {"type": "text", "text": question}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    reference = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert encoded.input_ids.tolist() == reference["input_ids"][0]
    assert (encoded.labels != IGNORE_INDEX).long().tolist() == reference["assistant_masks"][0]
    assert encoded.input_ids[0] == loaded.model.llm.tokenizer.bos_token_id


@pytest.mark.parametrize("checkpoint", ["llava", "llava_next"])
def test_export_after_import_gives_back_the_checkpoints_processor(
    checkpoint: str, llava_folder: Path, llava_next_folder: Path, pictures: dict[str, Path], tmp_path: Path
) -> None:
    original = llava_folder if checkpoint == "llava" else llava_next_folder
    imported = load_model(original)
    save_model_folder(imported, tmp_path / "vlmlab")  # what vlmlab-import writes
    again = load_model(tmp_path / "vlmlab")
    export_hf_llava(again.model, tmp_path / "hf", again.image_resize, again.anyres, next_=checkpoint == "llava_next")
    before, after = AutoProcessor.from_pretrained(original), AutoProcessor.from_pretrained(tmp_path / "hf")
    assert after.chat_template == before.chat_template
    settings = ("size", "crop_size", "do_center_crop", "resample", "image_mean", "image_std", "rescale_factor")
    for name in (*settings, "do_pad", "image_grid_pinpoints"):
        assert getattr(after.image_processor, name, None) == getattr(before.image_processor, name, None), name
    for prompt, names in REQUESTS:
        messages = with_paths(hf_messages(prompt, names), names, pictures)
        expected, actual = (
            p.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
            for p in (before, after)
        )
        assert actual.keys() == expected.keys()
        for key in expected:
            assert torch.equal(actual[key], expected[key]), (prompt, key)


def readme_snippet() -> str:
    """The manual's Python snippet (docs/using-a-model.md) that answers with an exported model in transformers."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return next(b for b in blocks if "LlavaForConditionalGeneration.from_pretrained" in b)


def test_vlmlab_generate_answers_as_transformers_and_the_readme_snippet(
    llava_folder: Path, pictures: dict[str, Path], tmp_path: Path, in_process: InProcess
) -> None:
    """`vlmlab-generate` on the llava-hf folder imported into vlmlab answers each request exactly as transformers'
    processor and `generate` do on the original; the README's snippet, run on the folder exported back from
    vlmlab, prints the same answer."""
    loaded = load_model(llava_folder)
    imported = save_model_folder(loaded, tmp_path / "imported")  # what vlmlab-import writes
    requests = tmp_path / "requests.jsonl"
    lines = [
        {"id": str(k), "prompt": p, "image": [str(pictures[n]) for n in names]} for k, (p, names) in enumerate(REQUESTS)
    ]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    command = [str(BIN / "vlmlab-generate"), f"checkpoint={imported}", f"requests={requests}",
               "output=answers.jsonl", "max_new_tokens=6", "batch_size=3"]  # fmt: skip
    result = in_process(generate_main, command, tmp_path)  # its process: tests/test_generate.py
    assert result.returncode == 0, result.stderr[-3000:]
    answers = [json.loads(line)["answer"] for line in (tmp_path / "answers.jsonl").read_text().splitlines()]

    processor = AutoProcessor.from_pretrained(llava_folder)
    model = LlavaForConditionalGeneration.from_pretrained(llava_folder).eval()
    inputs = transformers_inputs(llava_folder, pictures)
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    assert answers == [text.strip() for text in processor.batch_decode(output, skip_special_tokens=True)]

    export_hf_llava(loaded.model, tmp_path / "exported", loaded.image_resize, loaded.anyres)
    snippet = readme_snippet().replace("exports/my-llava", str(tmp_path / "exported"))
    snippet = snippet.replace("cat.png", str(pictures["wide"])).replace("What is on the mat?", REQUESTS[0][0])
    printed = StringIO()
    with redirect_stdout(printed):
        exec(compile(snippet.replace("max_new_tokens=64", "max_new_tokens=6"), "docs/using-a-model.md", "exec"), {})
    assert printed.getvalue().strip() == answers[0]
