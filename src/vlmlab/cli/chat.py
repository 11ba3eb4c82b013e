"""`vlmlab-chat`: a multi-turn conversation with a trained model on stdin/stdout, answers streamed.

Through a pipe (stdin not a terminal) it writes only the answers, one per line, so its output can be
read by a program; at a terminal it shows a prompt and the commands.
"""

from __future__ import annotations

import sys
from typing import TextIO

import torch
from omegaconf import DictConfig

from vlmlab.cli.common import load_from_command_line
from vlmlab.cli.entry import hydra_command
from vlmlab.cli.generate import generation_options
from vlmlab.data.chat_format import SampleError
from vlmlab.data.image_processing import ImageLoadError, ProcessedImage
from vlmlab.inference.answer import Assistant, GenerationOptions

HELP = "commands: /image PATH (attach to your next message), /reset (start over), /help (this list), /quit"


def chat(assistant: Assistant, options: GenerationOptions, lines: TextIO, out: TextIO, interactive: bool) -> int:
    """Run the conversation over `lines`; returns the number of answers given."""
    messages: list[dict[str, str]] = []
    images: list[ProcessedImage] = []  # every image of the conversation, in order
    pending: list[ProcessedImage] = []  # attached to the next message
    answers = 0
    if interactive:
        print(HELP, file=out)
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = lines.readline()
        if not line:  # end of input
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text in ("/help", "/?"):
            print(HELP, file=out if interactive else sys.stderr)
            continue
        if text == "/reset":
            messages, images, pending = [], [], []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if text.startswith("/image"):
            try:
                pending.append(assistant.load_image(text.removeprefix("/image").strip()))
            except ImageLoadError as err:
                print(f"{err}; the image was not attached", file=sys.stderr)
            continue
        turn = [*messages, assistant.user_message(text, len(pending))]
        try:
            sample = assistant.encode(turn, [*images, *pending])
        except SampleError as err:
            print(f"{err}; /reset to start a new conversation", file=sys.stderr)
            continue
        if interactive:
            out.write("assistant> ")
        answer = assistant.stream(sample, options, out)
        out.write("\n")
        out.flush()
        messages = [*turn, {"role": "assistant", "content": answer}]
        images, pending = [*images, *pending], []
        answers += 1
    return answers


def run_chat(cfg: DictConfig) -> None:
    """Everything `vlmlab-chat` does after Hydra composed `cfg`. Ctrl-C or Ctrl-D ends the session."""
    torch.manual_seed(cfg.seed)
    loaded = load_from_command_line(cfg)
    assistant = Assistant(loaded.model, loaded.image_resize, cfg.system, loaded.anyres)
    try:
        chat(assistant, generation_options(cfg), sys.stdin, sys.stdout, interactive=sys.stdin.isatty())
    except KeyboardInterrupt:
        print("", file=sys.stderr)  # end the prompt's line; no traceback


main = hydra_command(
    "vlmlab-chat", "chat", run_chat, user_errors=(ValueError, FileNotFoundError), free_text=("system",)
)

if __name__ == "__main__":
    main()
