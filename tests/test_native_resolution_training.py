"""Native-resolution encoders in the VLM (`model/encoder=tiny_qwen2_vl`, `tiny_siglip2_naflex`): each image of the
synthetic data at its own shape (30 x 200 to 200 x 30) takes the tokens of its own grid; a batch mixing one-image,
two-image and text-only prompts gives each row the logits it has alone; the FLOPs estimate counts the packed tower's
work; a curriculum trains, scores and answers through the commands; what cannot work is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tests.cli_in_process import BIN, InProcess
from vlmlab.cli.data import main as data_main
from vlmlab.cli.generate import main as generate_main
from vlmlab.cli.train import main as train_main
from vlmlab.data.conversation_dataset import collate, record_images
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.image_processing import encoder_image_processor
from vlmlab.errors import UsageError
from vlmlab.inference.answer import Assistant
from vlmlab.models.builder import build_vlm
from vlmlab.models.image_layout import NativeTokenLayout
from vlmlab.testing import TINY_DEMO_PRETRAIN, TINY_OVERRIDES, compose_train, reshaped_copy

SHAPES = ((30, 200), (200, 30), (48, 48), (90, 140), (140, 90))  # (height, width)
ENCODERS = ("tiny_qwen2_vl", "tiny_siglip2_naflex")


@pytest.fixture(scope="module")
def shaped_root(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """The tiny synthetic dataset with every image resized to one of SHAPES in turn."""
    return reshaped_copy(synth_root, tmp_path_factory.mktemp("native") / "synthetic", SHAPES)


def config(shaped_root: Path, encoder: str, *overrides: str) -> DictConfig:
    """The tiny train config with `encoder` on the shaped data (paths beside it, outside a run)."""
    paths = [f"paths.root_dir={shaped_root.parent}", f"paths.output_dir={shaped_root.parent / 'run'}"]
    return compose_train([*TINY_OVERRIDES, *paths, f"model/encoder={encoder}", f"data.root={shaped_root}", *overrides])


@pytest.fixture(scope="module", params=ENCODERS)
def built(request: pytest.FixtureRequest, shaped_root: Path) -> tuple[DictConfig, object, VLMDataModule]:
    cfg = config(shaped_root, request.param)
    torch.manual_seed(0)
    model = build_vlm(cfg.model).eval()
    return cfg, model, VLMDataModule.from_config(cfg.data, model, seed=0, micro_batch_size=4)


def test_each_image_takes_the_tokens_of_its_own_grid(built: tuple) -> None:
    _, model, data = built
    layout = model.image_layout
    assert isinstance(layout, NativeTokenLayout) and model.native_resolution
    dataset = data.dataset("vqa", "train")
    policy = data.image_policy("vqa", "train")
    grids = set()
    for index in range(len(SHAPES)):
        record, sample = dataset.records[index], dataset[index]
        (path,) = record_images(record)
        with Image.open(path) as image:
            grid = model.encoder.recipe.grid(image.height, image.width)
        assert sample["image_grids"].tolist() == [list(grid)]
        assert sample["pixel_values"].shape == (grid[1] * grid[2], model.encoder.recipe.patch_dim)
        tokens = int((sample["input_ids"] == model.image_token_id).sum())
        assert tokens == layout.count(grid) == data.tiled_image_tokens(path, policy)  # the length estimate's too
        assert tokens <= layout.max_tokens
        grids.add(grid)
    assert len(grids) >= 3  # each image's grid follows its shape


def test_a_mixed_batch_gives_each_row_its_logits_alone(built: tuple, shaped_root: Path) -> None:
    _, model, _ = built
    assistant = Assistant(model, "resize")
    images = sorted((shaped_root / "images").glob("**/*.png"))[:2]
    requests = [("What is shown?", images[:1]), ("Compare the two.", images[:2]), ("Say hello.", [])]
    samples = []
    for prompt, paths in requests:
        loaded = [assistant.load_image(path) for path in paths]
        samples.append(assistant.encode([assistant.user_message(prompt, len(loaded))], loaded))
    assert {len(s["image_grids"]) if s["image_grids"] is not None else 0 for s in samples} == {0, 1, 2}
    pad = model.llm.tokenizer.pad_token_id
    batch = collate(samples, pad)
    with torch.no_grad():
        together = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                         image_grids=batch["image_grids"]).logits  # fmt: skip
        for row, sample in enumerate(samples):
            alone = collate([sample], pad)
            logits = model(alone["input_ids"], alone["attention_mask"], alone["pixel_values"],
                           image_grids=alone["image_grids"]).logits[0]  # fmt: skip
            torch.testing.assert_close(together[row, : len(logits)], logits, atol=1e-5, rtol=0)


def test_the_flops_estimate_counts_the_packed_towers_work(built: tuple) -> None:
    _, model, data = built
    batch = collate([data.dataset("vqa", "train")[i] for i in range(len(SHAPES))], 0)
    grids = batch["image_grids"]
    assert len(set(map(tuple, grids.tolist()))) >= 3
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.encoder(batch["pixel_values"], grids)
    assert model.encoder.flops(grids) == counter.get_total_flops()


@pytest.mark.parametrize(
    ("encoder", "loading"),
    [("tiny_qwen2_vl", []), ("tiny_siglip2_naflex", ["data.packing=true", "data.num_workers=1"])],
)
def test_a_curriculum_trains_scores_and_answers(
    encoder: str, loading: list[str], shaped_root: Path, tmp_path: Path, in_process: InProcess
) -> None:
    """In this process: `vlmlab-train` (its process runs elsewhere: tests/test_cli.py), padded, or packed with a
    loader worker; then `vlmlab-generate` on the stage folder with a 30 x 200 image."""
    train = [str(BIN / "vlmlab-train"), *TINY_OVERRIDES, f"model/encoder={encoder}", f"data.root={shaped_root}"]
    train += loading
    trained = in_process(train_main, [*train, "hydra.run.dir=run"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    scores = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert "test/vqa/vqa_accuracy" in scores and "test/vqa/blind_vqa_accuracy" in scores
    image = tmp_path / "strip.png"
    Image.open(next(shaped_root.glob("images/vqa/test/*.png"))).resize((200, 30)).save(image)
    stage = tmp_path / "run" / "stages" / "instruct"
    command = [
        str(BIN / "vlmlab-generate"),
        f"checkpoint={stage}",
        f"image={image}",
        "prompt=What?",
        "max_new_tokens=3",
    ]
    answered = in_process(generate_main, command, tmp_path)
    assert answered.returncode == 0 and answered.stdout.strip(), answered.stderr[-3000:]


def test_the_data_check_reports_each_images_tokens(shaped_root: Path, tmp_path: Path, in_process: InProcess) -> None:
    check = [str(BIN / "vlmlab-data"), "check", *TINY_OVERRIDES, "model/encoder=tiny_qwen2_vl"]
    report = in_process(data_main, [*check, f"data.root={shaped_root}", "--source", "vqa", "--json"], tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    splits = {s["split"]: s for s in json.loads(report.stdout)["splits"]}
    tokens = splits["train"]["image_tokens_per_image"]
    assert 4 <= tokens["p50"] < tokens["p99"] <= 64  # within the budget, and not one count for every image


def test_what_cannot_work_with_images_of_their_own_shapes_is_refused(shaped_root: Path) -> None:
    with pytest.raises(ValueError, match="does not map each token alone.*model/connector=linear"):
        build_vlm(config(shaped_root, "tiny_qwen2_vl", "model/connector=pixel_shuffle").model)
    with pytest.raises(ValueError, match="image_newline ends the rows of tiled images"):
        build_vlm(config(shaped_root, "tiny_qwen2_vl", "model.image_newline=true").model)
    cfg = config(shaped_root, "tiny_siglip2_naflex", "data.image_resize=anyres")
    model = build_vlm(cfg.model)
    with pytest.raises(UsageError, match="a native-resolution encoder takes each image whole"):
        VLMDataModule.from_config(cfg.data, model, seed=0)
    cfg = config(shaped_root, "tiny_siglip2_naflex", "data.feature_cache.enabled=true")
    with pytest.raises(UsageError, match="set data.feature_cache.enabled=false"):
        VLMDataModule.from_config(cfg.data, model, seed=0, encoder_frozen=True)


def test_keep_aspect_ratio_false_stretches_each_image_to_the_budgets_square(shaped_root: Path) -> None:
    """The fixed-size encoder's resize at a native tower (`resize` against `native` at one tower and one budget)."""
    cfg = config(shaped_root, "tiny_qwen2_vl", "model.encoder.max_tokens=36", "model.encoder.keep_aspect_ratio=false")
    model = build_vlm(cfg.model)
    data = VLMDataModule.from_config(cfg.data, model, seed=0, micro_batch_size=4)
    dataset = data.dataset("vqa", "train")
    for index in range(len(SHAPES)):  # 30 x 200 to 200 x 30: all 168 x 168 px, 12 x 12 patches, 36 tokens
        sample = dataset[index]
        assert sample["image_grids"].tolist() == [[1, 12, 12]]
        assert int((sample["input_ids"] == model.image_token_id).sum()) == 36


@pytest.mark.parametrize("encoder", ENCODERS)
def test_contrastive_pretraining_takes_each_images_own_tokens(
    encoder: str, shaped_root: Path, tmp_path: Path, in_process: InProcess
) -> None:
    """The demo's encoder pretraining (CLIP-style, against a text tower) with a native-resolution tower: each image
    at its own shape, pooled over its own tokens."""
    pretrain = [o for o in TINY_DEMO_PRETRAIN if "val_check_interval" not in o]
    train = [str(BIN / "vlmlab-train"), "experiment=demo", *TINY_OVERRIDES, *pretrain, f"model/encoder={encoder}"]
    train += [f"data.root={shaped_root}", "~curriculum.stages.align", "~curriculum.stages.instruct"]
    trained = in_process(train_main, [*train, "eval.enabled=false", "hydra.run.dir=run"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "stages" / "pretrain" / "objective.safetensors").is_file()


@pytest.mark.parametrize("budget", [16, 144])
def test_the_token_budget_study_spends_at_most_its_budget(budget: int) -> None:
    """experiments/native_resolution/run_token_budget.py's three commands at a budget, composed and built: every
    receipt shape takes at most `budget` image tokens; resize exactly that many, whatever the shape."""
    from experiments.native_resolution.run_token_budget import METHODS, command

    receipts = [(192, 96), (288, 96), (288, 192)]  # (height, width), experiments/anyres
    for method in METHODS:
        overrides = [a for a in command(method, budget, 0, Path("out"))[1:] if not a.startswith(("hydra.", "~"))]
        cfg = compose_train(overrides)
        model = build_vlm(cfg.model)
        images = encoder_image_processor(model.encoder, cfg.data.image_resize, cfg.data.anyres)  # the data module's
        tokens = [model.image_layout.count(images(Image.new("RGB", (w, h))).grid) for h, w in receipts]
        assert all(4 <= t <= budget for t in tokens), (method, tokens)
        assert (tokens == [budget] * 3) == (method == "resize"), (method, tokens)
