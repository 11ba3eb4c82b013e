"""Running vlmlab at a tiny size, for its tests and for checks that run the same cases elsewhere (the GPU check's
CPU dry run): the tiny model and data overrides, a train config composed as `vlmlab-train` would compose it, a
command runner, a free port, and a callback that kills a run at a chosen step (fault injection at a known point).
vlmlab's commands never import this module."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from PIL import Image

from vlmlab.data.synthetic import SynthConfig
from vlmlab.presets import config_dir

# 48 px images, a few of each task and split: written in a second.
TINY_SYNTH = SynthConfig.demo(seed=0, image_size=48, num_train=48, num_val=8, num_test=8, train_turns=2)

# Shrinks the default (demo-sized) run to seconds: a narrow one-layer LLM, TINY_SYNTH's data, a few steps per stage.
TINY_OVERRIDES = [
    "model.llm.config.hidden_size=32",
    "model.llm.config.intermediate_size=64",
    "model.llm.config.num_hidden_layers=1",
    "model.llm.tokenizer.vocab_size=300",
    "model.llm.tokenizer.corpus.num_samples=200",
    "data.num_workers=0",
    "data.eval_batch_size=8",
    f"data.synthetic.image_size={TINY_SYNTH.image_size}",
    f"data.synthetic.num_train={TINY_SYNTH.num_train}",
    f"data.synthetic.num_val={TINY_SYNTH.num_val}",
    f"data.synthetic.num_test={TINY_SYNTH.num_test}",
    f"data.synthetic.train_turns={TINY_SYNTH.train_turns}",
    "curriculum.stages.align.max_steps=3",
    "curriculum.stages.align.batch_size=8",
    "curriculum.stages.align.micro_batch_size=8",
    "curriculum.stages.align.val_check_interval=3",
    "curriculum.stages.instruct.max_steps=3",
    "curriculum.stages.instruct.batch_size=8",
    "curriculum.stages.instruct.micro_batch_size=4",
    "curriculum.stages.instruct.val_check_interval=3",
    "eval.max_new_tokens=4",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "~callbacks.progress_bar",
]
# With experiment=demo (and TINY_OVERRIDES): its encoder-pretraining stage and text tower, shrunk likewise.
TINY_DEMO_PRETRAIN = [
    "curriculum.stages.pretrain.max_steps=3",
    "curriculum.stages.pretrain.batch_size=8",
    "curriculum.stages.pretrain.micro_batch_size=8",
    "curriculum.stages.pretrain.val_check_interval=3",
    "model.text_tower.config.hidden_size=32",
    "model.text_tower.config.intermediate_size=64",
    "model.text_tower.config.num_hidden_layers=1",
]


def reshaped_copy(root: Path, out: Path, shapes: Sequence[tuple[int, int]]) -> Path:
    """A copy in `out` of the synthetic dataset at `root`, its images resized to `shapes` (height, width) in turn:
    the images of one batch at different aspect ratios."""
    shutil.copytree(root, out)
    for i, path in enumerate(sorted(out.glob("images/**/*.png"))):
        height, width = shapes[i % len(shapes)]
        Image.open(path).resize((width, height)).save(path)
    return out


def compose_train(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """conf/train.yaml with `overrides`, composed as `vlmlab-train` composes it (outside a run: no run folder)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)


def run_command(
    args: Sequence[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    new_session: bool = False,
    stdin: str | None = None,
) -> subprocess.CompletedProcess:
    """`args` run from `cwd` with this environment and `env`, output captured as text; rich tables at full width.
    `new_session`: the command leads its own process group (a KillAtStep SIGKILL then spares the caller)."""
    return subprocess.run(
        list(args),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "250", **(env or {})},
        start_new_session=new_session,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server or a process group a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class KillAtStep(L.Callback):
    """SIGKILLs the whole run (its process group) at optimizer step `step` of stage `stage`: a kill at a known
    point, the same on every machine, where a timed kill would land anywhere. With `interrupt` it presses
    Ctrl-C instead (SIGINT to the main process, as a terminal sends it). Added to a run as
    `+callbacks.kill._target_=vlmlab.testing.KillAtStep +callbacks.kill.stage=instruct +callbacks.kill.step=2`."""

    def __init__(self, stage: str, step: int, interrupt: bool = False) -> None:
        self.stage = stage
        self.step = step
        self.interrupt = interrupt
        self.sent = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Checkpoint callbacks run after this one: a checkpoint due at `step` is not written before the kill.
        if pl_module.stage.name == self.stage and trainer.global_step >= self.step and not self.sent:
            self.sent = True
            if self.interrupt:
                # As at a terminal, SIGINT raises KeyboardInterrupt (a run started in the background by a
                # non-interactive shell inherits SIGINT ignored).
                signal.signal(signal.SIGINT, signal.default_int_handler)
                os.kill(os.getpid(), signal.SIGINT)
            else:
                os.killpg(os.getpgid(0), signal.SIGKILL)
