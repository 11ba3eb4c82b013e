"""Synthetic image-grounded tasks that no hub serves: captioning, VQA and document QA.

Every answer can only be read from the image (the blind baseline shows it). Scenes and documents
are drawn on a 3x3 grid of cells (one shape or one character per cell), so at 96 px a ViT with
32 px patches sees each cell as one patch. The output is the
LLaVA on-disk format: PNG images plus JSON lists of records with `id`, `image` and
`conversations`; vlmlab adds `task` and, for evaluation, `answers` (the accepted answers).

Layout written by `write_synthetic_dataset(root, ...)`:
    root/manifest.json                 generator settings (a changed setting regenerates)
    root/images/<task>/<split>/<id>.png
    root/<task>/<split>.json           task in {caption, vqa, doc}, split in {train, val, test}
    root/doc/<split>_text.json         each receipt paired with its printed text ("$43 x3"), for pretraining
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TASKS = ("caption", "vqa", "doc")
SPLITS = ("train", "val", "test")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
GRID = 3  # cells per side
POSITIONS = (
    "top left", "top middle", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom middle", "bottom right",
)  # fmt: skip


FORMAT_VERSION = 3  # bumped when the files change for the same settings (2: ten VQA answers, 3: receipt texts)
TRANSCRIBE = "Read the receipt."
VQA_ANNOTATORS = 10


@dataclass(frozen=True)
class SynthConfig:
    """Generator settings; the same settings and seed always give the same files."""

    seed: int = 0
    image_size: int = 96
    num_train: int = 3000  # images per task
    num_val: int = 100
    num_test: int = 300
    train_turns: int = 4  # questions per training image (multi-turn conversations)


@dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str
    position: str


@dataclass(frozen=True)
class Receipt:
    items: int
    total: int


def sample_scene(rng: random.Random) -> list[ShapeObject]:
    """1-3 shapes in distinct grid cells, with distinct colours, sorted by cell."""
    count = rng.randint(1, 3)
    cells = sorted(rng.sample(range(len(POSITIONS)), count))
    colors = rng.sample(list(COLORS), count)
    return [ShapeObject(c, rng.choice(SHAPES), POSITIONS[cell]) for cell, c in zip(cells, colors)]


def sample_receipt(rng: random.Random) -> Receipt:
    return Receipt(items=rng.randint(1, 9), total=rng.randint(10, 99))


def render_scene(objects: list[ShapeObject], size: int) -> Image.Image:
    # Mid-grey background (about zero after normalisation), so a shape's colour sets the direction
    # of its patch features. A white outline gives each shape a colour-independent pattern of its own:
    # filled shapes alone differ mostly in area, i.e. in feature length, which RMSNorm erases.
    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    cell = size // GRID
    for obj in objects:
        index = POSITIONS.index(obj.position)
        x0, y0 = (index % GRID) * cell, (index // GRID) * cell
        # Centred at a fixed size, each shape is one fixed pattern per cell: a tiny encoder trained
        # from scratch separates shapes as easily as colours.
        extent = cell * 3 // 4
        left = x0 + (cell - extent) // 2
        top = y0 + (cell - extent) // 2
        box = (left, top, left + extent, top + extent)
        fill = COLORS[obj.color]
        style = {"fill": fill, "outline": (255, 255, 255), "width": max(1, cell // 12)}
        if obj.shape == "circle":
            draw.ellipse(box, **style)
        elif obj.shape == "square":
            draw.rectangle(box, **style)
        else:
            draw.polygon([(left + extent / 2, top), (left, top + extent), (left + extent, top + extent)], **style)
    return image


def render_receipt(receipt: Receipt, size: int, rng: random.Random) -> tuple[Image.Image, str]:
    """A receipt stub: a total line `$nn` and a quantity line `xn` in two of the three rows, in
    random order, one character per grid cell. Which line is which can only be told by reading it.
    Light text on mid-grey (about zero after normalisation) makes each glyph's own strokes, not the
    paper, the bulk of its patch's features. Returns the image and its text, line by line from the top."""
    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    cell = size // GRID
    font = ImageFont.load_default(size=cell * 8 // 10)
    lines = [f"${receipt.total}", f"x{receipt.items}"]
    rows = sorted(rng.sample(range(GRID), 2))
    rng.shuffle(lines)
    for row, line in zip(rows, lines):  # rows increase: the lines are in reading order
        column = rng.randint(0, GRID - len(line))
        for i, char in enumerate(line):
            center = ((column + i) * cell + cell / 2, row * cell + cell / 2)
            draw.text(
                center, char, fill=(255, 255, 255), font=font, anchor="mm", stroke_width=1, stroke_fill=(255, 255, 255)
            )
    return image, " ".join(lines)


def caption_of(objects: list[ShapeObject]) -> str:
    parts = [f"a {o.color} {o.shape} in the {o.position}" for o in objects]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + "."


def vqa_pairs(objects: list[ShapeObject], rng: random.Random, count: int) -> list[tuple[str, str]]:
    """`count` distinct question/answer pairs about the scene (at most as many as exist), one question
    type drawn at a time."""
    count = min(count, 1 + 3 * len(objects))  # the count question plus colour, shape, position per object
    pairs: list[tuple[str, str]] = []
    while len(pairs) < count:
        obj = rng.choice(objects)
        kind = rng.choice(("color", "shape", "count", "position"))
        if kind == "color":
            pair = (f"What color is the shape in the {obj.position}?", obj.color)
        elif kind == "shape":
            pair = (f"What shape is in the {obj.position}?", obj.shape)
        elif kind == "count":
            pair = ("How many shapes are there?", str(len(objects)))
        else:
            pair = (f"Where is the {obj.color} shape?", obj.position)
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def doc_pairs(receipt: Receipt, rng: random.Random, count: int) -> list[tuple[str, str]]:
    """Up to two questions, one per field, in random order."""
    pairs = [("What is the total?", str(receipt.total)), ("How many items are there?", str(receipt.items))]
    rng.shuffle(pairs)
    return pairs[:count]


def _conversation(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    """LLaVA turns; the image placeholder leads the first question, as in LLaVA's data."""
    turns = []
    for i, (question, answer) in enumerate(pairs):
        turns.append({"from": "human", "value": f"<image>\n{question}" if i == 0 else question})
        turns.append({"from": "gpt", "value": answer})
    return turns


def sample_record(task: str, rng: random.Random, turns: int, size: int) -> tuple[dict, Image.Image, str | None]:
    """One record (without id/image path), its image and, for a receipt, its printed text."""
    text = None
    if task == "caption":
        objects = sample_scene(rng)
        pairs = [("Describe the image.", caption_of(objects))]
        image = render_scene(objects, size)
    elif task == "vqa":
        objects = sample_scene(rng)
        pairs = vqa_pairs(objects, rng, turns)
        image = render_scene(objects, size)
    elif task == "doc":
        receipt = sample_receipt(rng)
        pairs = doc_pairs(receipt, rng, turns)
        image, text = render_receipt(receipt, size, rng)
    else:
        raise ValueError(f"unknown synthetic task '{task}'; valid: {', '.join(TASKS)}")
    # VQA keeps VQAv2's ten human answers (here ten who agree), so its official accuracy applies.
    answers = [pairs[-1][1]] * (VQA_ANNOTATORS if task == "vqa" else 1)
    record = {"task": task, "conversations": _conversation(pairs), "answers": answers}
    return record, image, text


def write_synthetic_dataset(root: str | Path, config: SynthConfig = SynthConfig()) -> Path:
    """Write all tasks and splits under `root`; returns the manifest path. Skips work if already there."""
    root = Path(root)
    manifest = root / "manifest.json"
    settings = {**asdict(config), "format_version": FORMAT_VERSION}
    if manifest.exists() and json.loads(manifest.read_text()) == settings:
        return manifest
    sizes = {"train": config.num_train, "val": config.num_val, "test": config.num_test}
    for task_index, task in enumerate(TASKS):
        for split_index, split in enumerate(SPLITS):
            rng = random.Random(config.seed * 1000 + task_index * 10 + split_index)
            turns = config.train_turns if split == "train" else 1
            image_dir = root / "images" / task / split
            image_dir.mkdir(parents=True, exist_ok=True)
            records, texts = [], []
            for i in range(sizes[split]):
                record, image, text = sample_record(task, rng, turns, config.image_size)
                record_id = f"{task}-{split}-{i:06d}"
                relative = f"images/{task}/{split}/{record_id}.png"
                image.save(root / relative)
                records.append({"id": record_id, "image": relative, **record})
                if text is not None:  # the receipt's printed lines: an image-text pair for pretraining
                    pair = _conversation([(TRANSCRIBE, text)])
                    texts.append(
                        {"id": f"{record_id}-text", "image": relative, "task": "caption", "conversations": pair}
                    )
            (root / task).mkdir(exist_ok=True)
            (root / task / f"{split}.json").write_text(json.dumps(records, indent=1))
            if texts:
                (root / task / f"{split}_text.json").write_text(json.dumps(texts, indent=1))
    manifest.write_text(json.dumps(settings, indent=2))
    return manifest


def tokenizer_corpus(num_samples: int = 2000, seed: int = 0) -> list[str]:
    """Texts of the synthetic tasks (conversations only, no images), to train a tiny tokenizer on."""
    rng = random.Random(seed)
    texts = []
    for i in range(num_samples):
        task = TASKS[i % len(TASKS)]
        if task == "doc":
            pairs = doc_pairs(sample_receipt(rng), rng, 2)
        elif task == "vqa":
            pairs = vqa_pairs(sample_scene(rng), rng, 2)
        else:
            pairs = [("Describe the image.", caption_of(sample_scene(rng)))]
        texts.extend(turn["value"] for turn in _conversation(pairs))
    texts.append("USER: ASSISTANT: system user assistant 0123456789")
    return texts
