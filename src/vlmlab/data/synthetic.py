"""Synthetic image-grounded tasks that no hub serves: captioning, VQA and document QA.

Every answer can only be read from the image (the blind baseline shows it). Scenes and documents
are drawn on a 3x3 grid of cells (one shape or one character per cell), so at 96 px a ViT with
32 px patches sees each cell as one patch. The output is the
LLaVA on-disk format: PNG images plus JSON lists of records with `id`, `image` and
`conversations`; vlmlab adds `task` and, for evaluation, `answers` (the accepted answers).

`hires_doc` (written only when `SynthConfig.tasks` names it) is a tall receipt of 6 or 9 lines (the item
count first, item names, the total last), 3 or 6 characters wide (96x192, 96x288 or 192x288 px at
image_size 96), in the doc task's print: one glyph per 32 px cell at the native size, 2-3x squeezed when
the whole receipt is resized to 96x96. It is what AnyRes tiling is for (experiments/anyres/).

Layout written by `write_synthetic_dataset(root, ...)`:
    root/manifest.json                 generator settings (a changed setting regenerates)
    root/images/<task>/<split>/<id>.png
    root/<task>/<split>.json           task in SynthConfig.tasks (caption, vqa, doc, hires_doc), split in
                                       {train, val, test}
    root/doc/<split>_text.json         each receipt paired with its printed text ("$43 x3"), for pretraining
    root/hires_doc/<split>_text.json   each tall receipt with its printed text, line by line
    root/hires_doc/<split>_tiles.json  each 96 px tile of a tall receipt (images/hires_doc/<split>_tiles/)
                                       with the text printed on it: its print at the native size, for pretraining
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageFont

from vlmlab.presets import preset_values

TASKS = ("caption", "vqa", "doc")  # the first tasks: a manifest of exactly these leaves `tasks` out (see manifest)
HIRES_TASK = "hires_doc"
# Every task, in the order that seeds their random streams: adding one at the end leaves the others' files as
# they were.
ALL_TASKS = (*TASKS, HIRES_TASK)
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
# Tall receipts: (lines, characters per line), one of them drawn per receipt. At image_size 96 a cell is
# 32 px: 96x192, 96x288 and 192x288 px (width x height), i.e. AnyRes grids of 2x1, 3x1 and 3x2 tiles.
HIRES_LAYOUTS = ((6, 3), (9, 3), (9, 6))
# Item-name letters of the filler lines: none that looks like a digit (O, I, S, B, Z, G) and no x, so that
# only the quantity (xn) and total ($nn) lines hold digits.
FILLER_LETTERS = "ACDEFHKLMNPRTUVWY"


@dataclass
class SynthConfig:
    """Generator settings; the same settings and seed always give the same files. The demo's values (each
    field's default) are written once, in conf/data/synthetic.yaml: `SynthConfig.demo()`."""

    seed: int
    image_size: int
    num_train: int  # images per task
    num_val: int
    num_test: int
    train_turns: int  # questions per training image (multi-turn conversations)
    tasks: tuple[str, ...]  # which of ALL_TASKS to write

    @classmethod
    def demo(cls, **changes: Any) -> SynthConfig:
        """The demo's settings (`data.synthetic` of conf/data/synthetic.yaml), with `changes`."""
        return cls(**{**OmegaConf.to_container(preset_values("data/synthetic", "synthetic")), **changes})

    def __post_init__(self) -> None:
        tasks = tuple(self.tasks)  # a list from a YAML config
        unknown = [t for t in tasks if t not in ALL_TASKS]
        if unknown or not tasks:
            raise ValueError(f"synthetic tasks {list(tasks)}: choose among {', '.join(ALL_TASKS)}")
        self.tasks = tasks

    def manifest(self) -> dict:
        """The settings as the manifest records them. `tasks` only when it is not the default: a manifest
        written before the field existed still matches, so the demo's files are not rewritten."""
        settings = {**asdict(self), "tasks": list(self.tasks), "format_version": FORMAT_VERSION}
        if self.tasks == TASKS:
            del settings["tasks"]
        return settings


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


@dataclass(frozen=True)
class TallReceipt:
    """A tall receipt: `lines` rows of `width` cells, each row (top to bottom) a (column, text) line."""

    receipt: Receipt
    width: int
    rows: tuple[tuple[int, str], ...]

    @property
    def text(self) -> str:
        return " ".join(line for _, line in self.rows)


def sample_tall_receipt(rng: random.Random) -> TallReceipt:
    """The quantity line `xn` first and the total line `$nn` last, as a till prints them, each at a random
    column of a random layout; every row between is an item-name line of filler letters, so every row
    holds print and squeezing the receipt mixes the key lines with their neighbours."""
    receipt = sample_receipt(rng)
    lines, width = rng.choice(HIRES_LAYOUTS)
    texts = [f"x{receipt.items}"]
    for _ in range(lines - 2):
        length = rng.randint(max(1, width // 3), width)
        texts.append("".join(rng.choice(FILLER_LETTERS) for _ in range(length)))
    texts.append(f"${receipt.total}")
    rows = tuple((rng.randint(0, width - len(text)), text) for text in texts)
    return TallReceipt(receipt, width, rows)


def render_tall_receipt(tall: TallReceipt, cell: int) -> Image.Image:
    """Drawn as `render_receipt` draws its lines (light on mid-grey, one glyph per `cell`-pixel cell)."""
    image = Image.new("RGB", (tall.width * cell, len(tall.rows) * cell), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=cell * 8 // 10)
    for row, (column, line) in enumerate(tall.rows):
        for i, char in enumerate(line):
            center = ((column + i) * cell + cell / 2, row * cell + cell / 2)
            draw.text(
                center, char, fill=(255, 255, 255), font=font, anchor="mm", stroke_width=1, stroke_fill=(255, 255, 255)
            )
    return image


def tile_texts(tall: TallReceipt, tile_cells: int) -> list[tuple[int, int, str]]:
    """(tile row, tile column, text printed on it) of each `tile_cells`-square tile of the receipt, row by
    row; the text is each row's characters inside the tile, rows joined by spaces ("" for a blank tile)."""
    tiles = []
    for tile_row in range(-(-len(tall.rows) // tile_cells)):
        for tile_col in range(-(-tall.width // tile_cells)):
            first, last = tile_col * tile_cells, (tile_col + 1) * tile_cells
            parts = []
            for column, line in tall.rows[tile_row * tile_cells : (tile_row + 1) * tile_cells]:
                part = "".join(c for i, c in enumerate(line) if first <= column + i < last)
                if part:
                    parts.append(part)
            tiles.append((tile_row, tile_col, " ".join(parts)))
    return tiles


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
    elif task == HIRES_TASK:
        record, image, tall = sample_tall_record(rng, turns, size)
        return record, image, tall.text
    else:
        raise ValueError(f"unknown synthetic task '{task}'; valid: {', '.join(ALL_TASKS)}")
    # VQA keeps VQAv2's ten human answers (here ten who agree), so its official accuracy applies.
    answers = [pairs[-1][1]] * (VQA_ANNOTATORS if task == "vqa" else 1)
    record = {"task": task, "conversations": _conversation(pairs), "answers": answers}
    return record, image, text


def write_synthetic_dataset(root: str | Path, config: SynthConfig) -> Path:
    """Write the configured tasks and all splits under `root`; returns the manifest path. Skips work if
    already there."""
    root = Path(root)
    manifest = root / "manifest.json"
    settings = config.manifest()
    if manifest.exists() and json.loads(manifest.read_text()) == settings:
        return manifest
    sizes = {"train": config.num_train, "val": config.num_val, "test": config.num_test}
    for task in config.tasks:
        for split_index, split in enumerate(SPLITS):
            # Each task's stream is seeded by its place in ALL_TASKS, whichever tasks are written.
            rng = random.Random(config.seed * 1000 + ALL_TASKS.index(task) * 10 + split_index)
            turns = config.train_turns if split == "train" else 1
            write_split(root, task, split, rng, sizes[split], turns, config.image_size)
    manifest.write_text(json.dumps(settings, indent=2))
    return manifest


def write_split(root: Path, task: str, split: str, rng: random.Random, count: int, turns: int, size: int) -> None:
    """`count` records of one task and split, their images, and for receipts their texts (and tiles)."""
    image_dir = root / "images" / task / split
    image_dir.mkdir(parents=True, exist_ok=True)
    records, texts, tiles = [], [], []
    for i in range(count):
        record_id = f"{task}-{split}-{i:06d}"
        relative = f"images/{task}/{split}/{record_id}.png"
        if task == HIRES_TASK:
            record, image, tall = sample_tall_record(rng, turns, size)
            text = tall.text
            tiles += write_tiles(root, f"images/{task}/{split}_tiles", record_id, image, tall, size)
        else:
            record, image, text = sample_record(task, rng, turns, size)
        image.save(root / relative)
        records.append({"id": record_id, "image": relative, **record})
        if text is not None:  # the receipt's printed lines: an image-text pair for pretraining
            texts.append(_text_record(f"{record_id}-text", relative, text))
    (root / task).mkdir(exist_ok=True)
    (root / task / f"{split}.json").write_text(json.dumps(records, indent=1))
    if texts:
        (root / task / f"{split}_text.json").write_text(json.dumps(texts, indent=1))
    if tiles:
        (root / task / f"{split}_tiles.json").write_text(json.dumps(tiles, indent=1))


def sample_tall_record(rng: random.Random, turns: int, size: int) -> tuple[dict, Image.Image, TallReceipt]:
    """One hires_doc record (without id/image path), its image and its receipt; the doc task's questions."""
    tall = sample_tall_receipt(rng)
    pairs = doc_pairs(tall.receipt, rng, turns)
    record = {"task": HIRES_TASK, "conversations": _conversation(pairs), "answers": [pairs[-1][1]]}
    return record, render_tall_receipt(tall, size // GRID), tall


def write_tiles(
    root: Path, folder: str, record_id: str, image: Image.Image, tall: TallReceipt, size: int
) -> list[dict]:
    """Each `size`-pixel tile of a tall receipt's image that holds print, saved under `folder`, as
    image-text records: the receipt's print at the native size, for an encoder to learn to read."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    records = []
    for row, col, text in tile_texts(tall, GRID):
        if not text:
            continue
        tile_id = f"{record_id}-tile{row}{col}"
        relative = f"{folder}/{tile_id}.png"
        image.crop((col * size, row * size, (col + 1) * size, (row + 1) * size)).save(root / relative)
        records.append(_text_record(tile_id, relative, text))
    return records


def _text_record(record_id: str, image: str, text: str) -> dict:
    """An image-text pair in the LLaVA format (a caption-like transcription)."""
    return {"id": record_id, "image": image, "task": "caption", "conversations": _conversation([(TRANSCRIBE, text)])}


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
