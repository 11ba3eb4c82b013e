"""pycocoevalcap's own Java PTBTokenizer, for the tests that compare vlmlab's tokenizer and scores with it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pycocoevalcap.tokenizer.ptbtokenizer as ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer


def can_run_java_tokenizer() -> bool:
    """java on the PATH and a writable pycocoevalcap folder (the tokenizer writes its input file beside the jar)."""
    return shutil.which("java") is not None and os.access(Path(ptbtokenizer.__file__).parent, os.W_OK)


def java_tokens(lines: list[str]) -> list[list[str]]:
    """pycocoevalcap's tokens of `lines` as one set (one Java call), each line a caption."""
    official = PTBTokenizer().tokenize({i: [{"caption": line}] for i, line in enumerate(lines)})
    return [[word for word in official[i][0].split(" ") if word] for i in range(len(lines))]
