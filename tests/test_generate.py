"""`vlmlab-generate` and `vlmlab-chat` with the demo's checkpoint, as a user runs them.

The answers are compared with the model's own: the demo's first (align) stage is used because, after a
few steps, it answers with text; the instruct stage has learnt to stop at once (an empty answer).
"""

from __future__ import annotations

import io
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.cli_in_process import BIN, InProcess
from vlmlab.cli.chat import main as chat_main
from vlmlab.cli.generate import main as generate_main
from vlmlab.cli.generate import read_requests
from vlmlab.inference.answer import Assistant, GenerationOptions
from vlmlab.inference.loading import load_model
from vlmlab.presets import config_dir
from vlmlab.testing import run_command


@pytest.fixture(scope="module")
def stage(demo_run: Path) -> Path:
    return demo_run / "stages" / "align"


@pytest.fixture(scope="module")
def assistant(stage: Path) -> Assistant:
    loaded = load_model(stage)
    return Assistant(loaded.model, loaded.image_resize)


@pytest.fixture(scope="module")
def images(synth_root: Path) -> list[Path]:
    return sorted((synth_root / "images" / "caption" / "test").glob("*.png"))[:2]


def greedy(assistant: Assistant, messages: list[dict], image_paths: list[Path], tokens: int = 6) -> str:
    sample = assistant.encode(messages, [assistant.load_image(p) for p in image_paths])
    return assistant.answer([sample], GenerationOptions(max_new_tokens=tokens))[0]


def test_generate_answers_one_prompt_and_a_file_of_requests(
    stage: Path,
    assistant: Assistant,
    images: list[Path],
    tmp_path: Path,
    in_process: InProcess,
) -> None:
    """One prompt through the command's process (its stdout holds the answer alone), a file of requests in this
    process."""
    question = "Describe the image."
    expected = greedy(assistant, [assistant.user_message(question, 1)], images[:1])
    assert expected  # the stage answers with text, so the comparisons below can fail
    single = run_command(
        [
            str(BIN / "vlmlab-generate"),
            f"checkpoint={stage}",
            f"image={images[0]}",
            f"prompt={question}",
            "max_new_tokens=6",
        ],
        cwd=tmp_path,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert single.stdout == expected + "\n"  # the answer alone: no logging on stdout

    (tmp_path / images[1].name).write_bytes(images[1].read_bytes())  # a path relative to the requests file
    requests = [
        {"id": "one", "image": str(images[0]), "prompt": question},
        {"id": "two", "image": [str(images[0]), images[1].name], "prompt": "<image> or <image>: which is brighter?"},
        {"prompt": "Say something."},
    ]
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    batch = in_process(
        generate_main,
        [
            str(BIN / "vlmlab-generate"),
            f"checkpoint={stage}",
            "requests=requests.jsonl",
            "output=out/answers.jsonl",
            "max_new_tokens=6",
            "batch_size=2",
        ],
        tmp_path,
    )
    assert batch.returncode == 0, batch.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["one", "two", 3]
    assert rows[0]["answer"] == expected  # left-padded in a batch, the same answer
    two = [{"role": "user", "content": requests[1]["prompt"]}]
    assert rows[1]["answer"] == greedy(assistant, two, [images[0], images[1]])
    assert rows[2]["answer"] == greedy(assistant, [assistant.user_message("Say something.", 0)], [])


def test_bad_image_paths_and_a_config_that_does_not_fit_are_named(
    stage: Path, images: list[Path], tmp_path: Path, in_process: InProcess
) -> None:
    lines = [{"image": str(images[0]), "prompt": "a"}, {"image": "missing.png", "prompt": "b"}]
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ValueError, match=rf"requests.jsonl line 2: image {tmp_path / 'missing.png'} does not exist"):
        read_requests(tmp_path / "requests.jsonl", tmp_path)
    missing = [str(BIN / "vlmlab-generate"), f"checkpoint={stage}", "image=nowhere/cat.png", "prompt=hi"]
    result = in_process(generate_main, missing, tmp_path)
    assert result.returncode != 0
    assert "vlmlab-generate: image nowhere/cat.png does not exist" in result.stderr

    # The command's own model groups (the default tiny_vit encoder) do not fit a tiny_clip checkpoint.
    groups = OmegaConf.create(
        {
            p: OmegaConf.load(config_dir() / "model" / p / f"{n}.yaml")
            for p, n in (("encoder", "tiny_vit"), ("connector", "mlp2x_gelu"), ("llm", "tiny_llama"))
        }
    )
    with pytest.raises(
        ValueError,
        match=r"(?s)does not fit the model built from this config.*size mismatch for connector.*choices of this",
    ):
        load_model(stage, groups, model_source="groups")
    with pytest.raises(ValueError, match=r"config.yaml already says which model .* model_source=groups"):
        load_model(stage, groups, model_choices_given=True)


def test_sampling_stop_strings_and_streaming(assistant: Assistant, images: list[Path]) -> None:
    sample = assistant.encode([assistant.user_message("Describe the image.", 1)], [assistant.load_image(images[0])])
    sampling = GenerationOptions(max_new_tokens=12, do_sample=True, temperature=2.0)
    torch.manual_seed(0)
    free = assistant.answer([sample], sampling)[0]
    stop = next(c for c in free[1:] if not c.isspace())  # a string the answer runs into
    cut = GenerationOptions(max_new_tokens=12, do_sample=True, temperature=2.0, stop=(stop,))
    torch.manual_seed(0)
    stopped = assistant.answer([sample], cut)[0]
    assert stopped == free[: free.index(stop, 1)].strip() and stopped != free
    torch.manual_seed(0)
    out = io.StringIO()
    assert assistant.stream(sample, cut, out) == stopped and out.getvalue() == stopped


def test_chat_through_a_pipe(stage: Path, assistant: Assistant, images: list[Path], tmp_path: Path) -> None:
    script = f"/image {images[0]}\nDescribe the image.\n/image missing.png\nAnd the colours?\n/quit\nnot read\n"
    result = run_command(
        [str(BIN / "vlmlab-chat"), f"checkpoint={stage}", "max_new_tokens=6"], cwd=tmp_path, stdin=script
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first_turn = [assistant.user_message("Describe the image.", 1)]
    first = greedy(assistant, first_turn, images[:1])
    history = [*first_turn, {"role": "assistant", "content": first}, {"role": "user", "content": "And the colours?"}]
    assert result.stdout.splitlines() == [first, greedy(assistant, history, images[:1])]
    assert "image missing.png does not exist; the image was not attached" in result.stderr


def readme_command(marker: str) -> list[str]:
    """The manual's example command line (docs/using-a-model.md) that contains `marker`, split as the shell
    splits it."""
    line = next(line for line in Path("docs/using-a-model.md").read_text().splitlines() if marker in line)
    return shlex.split(line)


def test_prompts_are_free_text_as_the_readme_writes_them(
    stage: Path,
    assistant: Assistant,
    images: list[Path],
    tmp_path: Path,
    in_process: InProcess,
) -> None:
    """The README's command line, then free text with quotes, commas, brackets and ${...}: Hydra's parsing of the
    command line, run in this process (vlmlab-generate's process is tested above)."""
    for i, image in enumerate(images):
        (tmp_path / f"{'ab'[i]}.png").write_bytes(image.read_bytes())
    command = readme_command("'image=[a.png,b.png]' prompt=")  # prompt="<image> or <image>: which is brighter?"
    command = [
        str(BIN / command[0].removeprefix(".venv/bin/")),
        f"checkpoint={stage}",
        *command[2:],
        "max_new_tokens=6",
    ]
    result = in_process(generate_main, command, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    question = [{"role": "user", "content": "<image> or <image>: which is brighter?"}]
    assert result.stdout == greedy(assistant, question, images) + "\n"

    text = "What's in it, exactly? (a=b, [c]: ${d})"  # an apostrophe, commas, brackets, an interpolation
    free = [str(BIN / "vlmlab-generate"), f"checkpoint={stage}", "image=a.png", f"prompt={text}", "max_new_tokens=6"]
    result = in_process(generate_main, free, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == greedy(assistant, [assistant.user_message(text, 1)], images[:1]) + "\n"


def test_chat_help_and_ctrl_c(
    stage: Path, tmp_path: Path, in_process: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("/help\n/quit\n"))  # in this process; Ctrl-C below in its own
    helped = in_process(chat_main, [str(BIN / "vlmlab-chat"), f"checkpoint={stage}"], tmp_path)
    assert helped.returncode == 0 and helped.stdout == ""  # nothing was sent to the model
    assert "/image PATH" in helped.stderr and "/reset" in helped.stderr

    chat = subprocess.Popen(
        [str(BIN / "vlmlab-chat"), f"checkpoint={stage}"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as at a terminal, even under nohup
    )
    assert chat.stdin is not None and chat.stderr is not None
    chat.stdin.write("/help\n")  # its answer on stderr says the model is loaded and the chat waits for input
    chat.stdin.flush()
    while "commands:" not in chat.stderr.readline():
        pass
    chat.send_signal(signal.SIGINT)
    _, stderr = chat.communicate(timeout=60)
    assert chat.returncode == 0 and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
