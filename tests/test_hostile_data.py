"""Data files someone else wrote: a record's image outside its source's folder (`..`, an absolute path, a symbolic
link), an image too large to decode, files that are not images. Each is a counted bad record of its own reason
in `vlmlab-data check` (the real CLI, in process), in training's dataset and in generation, before a pixel of it
is decoded; `data.allow_outside_images=true` and `data.max_image_pixels` are the opt-ins."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from tests.conftest import MODEL_OVERRIDES
from tests.published_formats import write_image, write_json
from tests.tiny_models import tiny_vlm
from vlmlab.cli.data import main as data_main
from vlmlab.data.image_processing import ImageLoadError, ImagePolicy, read_image
from vlmlab.inference.answer import Assistant


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG file that declares `width` x `height` pixels in a few hundred bytes (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


EXPECTED = {"outside_root": ["dotdot", "absolute", "symlink"], "too_large": ["bomb", "big"], "bad_image": ["truncated"]}


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """data=llava's layout under `root`, its instruction file naming one good image and one of each hostile kind."""
    root = tmp_path / "data"
    images = root / "images"
    write_image(images / "ok.png", "red")
    secret = tmp_path / "private" / "secret.png"
    write_image(secret, "blue")
    (images / "link.png").symlink_to(secret)
    png_header(images / "bomb.png", 20000, 20000)  # Pillow refuses it at open
    png_header(images / "big.png", 12000, 12000)  # Pillow would decode it: 430 MB
    (images / "truncated.png").write_bytes((images / "ok.png").read_bytes()[:60])
    ask = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]
    names = {"good": "ok.png", "dotdot": "../../private/secret.png", "absolute": str(secret), "symlink": "link.png"}
    names |= {"bomb": "bomb.png", "big": "big.png", "truncated": "truncated.png"}
    write_json(
        root / "llava_v1_5_mix665k.json", [{"id": k, "image": v, "conversations": ask} for k, v in names.items()]
    )
    write_json(root / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json", [])
    return root


def run_check(root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *extra: str) -> dict:
    """`vlmlab-data check --source instruct --json` on the hostile data: the split's report."""
    args = ["check", *MODEL_OVERRIDES, "data=llava", f"data.root={root}", "data.on_bad_record=skip"]
    args += ["data.num_workers=0", *extra, "--source", "instruct", "--json"]
    monkeypatch.chdir(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        data_main(args)
    captured = capsys.readouterr()
    assert exit_.value.code == 1, captured.err[-3000:]  # problems found, reported
    assert "Traceback" not in captured.err and "DecompressionBomb" not in captured.err
    return json.loads(captured.out)["splits"][0]


def test_hostile_images_are_counted_bad_records_in_data_check(
    hostile: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    report = run_check(hostile, monkeypatch, capsys)
    assert report["records"] == 7
    assert report["problems"] == EXPECTED
    allowed = run_check(
        hostile, monkeypatch, capsys, "data.allow_outside_images=true", "data.max_image_pixels=200000000"
    )
    # read from anywhere; the 12000 x 12000 header now passes the cap and is decoded (and found truncated)
    assert allowed["problems"] == {"too_large": ["bomb"], "bad_image": ["big", "truncated"]}


def test_training_and_generation_refuse_them_before_decoding(hostile: Path, tokenizer) -> None:
    policy = ImagePolicy(root=str(hostile / "images"))
    for name, reason in [("link.png", "outside_root"), ("bomb.png", "too_large"), ("big.png", "too_large")]:
        with pytest.raises(ImageLoadError) as err:
            read_image(hostile / "images" / name, policy=policy)
        assert err.value.reason == reason
    with pytest.raises(ImageLoadError, match="outside its source's image folder") as err:
        read_image(hostile / "images" / ".." / ".." / "private" / "secret.png", policy=policy)
    assert "data.allow_outside_images=true" in str(err.value)
    assistant = Assistant(tiny_vlm(tokenizer), "resize")
    with pytest.raises(ImageLoadError, match="12000x12000 = 144,000,000 pixels, more than data.max_image_pixels"):
        assistant.load_image(hostile / "images" / "big.png")
    assert assistant.load_image(hostile / "images" / "link.png").pixels.shape[0] == 1  # named by the user: read
