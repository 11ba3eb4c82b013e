"""Small datasets in their published formats, written under one root as the `data=` presets expect them.

Layout (as in conf/data/source/*.yaml): coco/annotations/captions_{train,val}2017.json with images
in coco/{train,val}2017/; vqav2/*questions.json + *annotations.json with COCO_<subtype>_<id>.jpg in
coco/{train,val}2014/; docvqa/<split>/<split>_v1.0.json with documents/ beside it;
llava_v1_5_mix665k.json with images/ and LLaVA-Pretrain/.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLOURS = ["red", "green", "blue", "yellow"]
VQA_ANSWERS = ["red", "red", "red", "red", "red", "red", "crimson", "red", "maroon", "red"]


def write_image(path: Path, colour: str, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_coco_captions(root: Path, split: str = "train2017", num_images: int = 2) -> list[list[str]]:
    """`num_images` images with 5 captions each (image i's j-th caption: "a {colour} square, take j")."""
    images, annotations, captions = [], [], []
    for i in range(num_images):
        image_id = 100 + i
        colour = COLOURS[i % len(COLOURS)]
        file_name = f"{image_id:012d}.jpg"
        write_image(root / "coco" / split / file_name, colour)
        images.append({"id": image_id, "file_name": file_name, "height": 30, "width": 40, "license": 1})
        texts = [f"a {colour} square, take {j}" for j in range(5)]
        captions.append(texts)
        annotations += [{"id": 1000 * i + j, "image_id": image_id, "caption": t} for j, t in enumerate(texts)]
    write_json(root / "coco" / "annotations" / f"captions_{split}.json", {"images": images, "annotations": annotations})
    return captions


def write_vqav2(root: Path, subtype: str = "train2014", num_questions: int = 3, annotated: bool = True) -> None:
    """Questions over 2 images; question q asks about image q % 2. Without annotations: a test split."""
    questions, annotations = [], []
    for q in range(num_questions):
        image_id = 7 + q % 2
        write_image(root / "coco" / subtype / f"COCO_{subtype}_{image_id:012d}.jpg", COLOURS[q % 2])
        questions.append({"image_id": image_id, "question": f"What colour is shape {q}?", "question_id": 500 + q})
        annotations.append(
            {
                "question_id": 500 + q,
                "image_id": image_id,
                "question_type": "what color is the",
                "answer_type": "other",
                "multiple_choice_answer": "red",
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(VQA_ANSWERS)
                ],
            }
        )
    info = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": subtype}
    write_json(root / "vqav2" / f"v2_OpenEnded_mscoco_{subtype}_questions.json", {**info, "questions": questions})
    if annotated:
        write_json(root / "vqav2" / f"v2_mscoco_{subtype}_annotations.json", {**info, "annotations": annotations})


def write_docvqa(root: Path, split: str = "train", num_questions: int = 3, annotated: bool = True) -> None:
    """Questions over one document page; answers ["$12.50", "12.50"] (test: no answers)."""
    write_image(root / "docvqa" / split / "documents" / "ffbf0023_4.png", "white", size=(60, 80))
    data = []
    for q in range(num_questions):
        entry = {
            "questionId": 9000 + q,
            "question": f"What is the total on line {q}?",
            "question_types": ["table/list"],
            "image": "documents/ffbf0023_4.png",
            "docId": 1234,
            "ucsf_document_id": "ffbf0023",
            "ucsf_document_page_no": "4",
        }
        if annotated:
            entry["answers"] = ["$12.50", "12.50"]
        data.append(entry)
    content = {"dataset_name": "docvqa", "dataset_split": split, "dataset_version": "1.0", "data": data}
    write_json(root / "docvqa" / split / f"{split}_v1.0.json", content)


def write_llava_instruct(root: Path) -> list[dict]:
    """The 665K mixture's three shapes: multi-turn with one image, several images, and text-only."""
    write_image(root / "images" / "coco" / "train2017" / "000000000009.jpg", "red")
    write_image(root / "images" / "gqa" / "images" / "2354786.jpg", "blue")
    records = [
        {
            "id": "000000000009",
            "image": "coco/train2017/000000000009.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is it?"},
                {"from": "gpt", "value": "It is red."},
                {"from": "human", "value": "Is it round?"},
                {"from": "gpt", "value": "No, it is a square."},
            ],
        },
        {
            "id": "pair-1",
            "image": ["coco/train2017/000000000009.jpg", "gqa/images/2354786.jpg"],
            "conversations": [
                {"from": "human", "value": "<image>\n<image>\nAre these the same colour?"},
                {"from": "gpt", "value": "No."},
            ],
        },
        {
            "id": "sharegpt-1",
            "conversations": [{"from": "human", "value": "Name a prime."}, {"from": "gpt", "value": "Seven."}],
        },
    ]
    write_json(root / "llava_v1_5_mix665k.json", records)
    return records


def bad_llava_dataset(root: Path) -> dict[str, int]:
    """A LLaVA file with one good record and one of each kind of bad record; returns the expected counts."""
    write_image(root / "images" / "ok.png", "red")
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG but not really")
    ask = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]
    records = [
        {"id": "good", "image": "ok.png", "conversations": ask},
        {"id": "gone", "image": "nowhere.png", "conversations": ask},
        {"id": "corrupt", "image": "corrupt.png", "conversations": ask},
        {"id": "no-turns", "image": "ok.png"},
        {"id": "two-images", "image": ["ok.png", "ok.png"], "conversations": ask},
        {"id": "long", "image": "ok.png", "conversations": [ask[0], {"from": "gpt", "value": "word " * 400}]},
        {
            "id": "late",
            "image": "ok.png",
            "conversations": [{"from": "human", "value": "<image>" + " pad" * 400}, ask[1]],
        },
        {
            "id": "image-late",
            "image": "ok.png",
            "conversations": [{"from": "human", "value": " pad" * 400 + "<image>"}, ask[1]],
        },
    ]
    write_json(root / "llava_v1_5_mix665k.json", records)
    write_json(root / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json", [])
    return {
        "missing_image": 1,
        "bad_image": 1,
        "malformed": 1,
        "image_count": 1,
        "answer_truncated": 1,  # "late": the prompt fills max_length ("long" keeps the start of its answer)
        "image_truncated": 1,
    }


def write_pope(root: Path, sampling: str = "random") -> list[dict]:
    """A POPE question file as RUCAIBox/POPE publishes them (output/coco/coco_pope_<sampling>.json: a JSON object a
    line) over two COCO val2014 images, and the images."""
    images = ["COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg"]
    for name, colour in zip(images, ("red", "blue")):
        write_image(root / "coco" / "val2014" / name, colour)
    questions = [
        {"question_id": 1, "image": images[0], "text": "Is there a snowboard in the image?", "label": "yes"},
        {"question_id": 2, "image": images[0], "text": "Is there a car in the image?", "label": "no"},
        {"question_id": 3, "image": images[1], "text": "Is there a person in the image?", "label": "yes"},
        {"question_id": 4, "image": images[1], "text": "Is there a dog in the image?", "label": "no"},
    ]
    path = root / "pope" / f"coco_pope_{sampling}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return questions
