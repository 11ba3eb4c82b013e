"""The manual as a test: every fenced block of README.md and docs/*.md says what it is, and every command of every
```bash block is run, composed or parsed by the real code, so that a renamed preset, option, field or file fails
here instead of a reader (docs/README.md, "How the command blocks are checked", is the convention).

How each command is checked, by its program (`check_command`):
- vlmlab-train, -eval, -generate, -chat, -export, -import: run in this process through the command's console-script
  entry point with Hydra's `--cfg job` (the real command line composed, nothing trained or loaded); a `-m` sweep once
  per value. vlmlab-train's composed config also goes through the preflight checks that depend neither on this
  machine nor on files (typed data and stage fields, the model parts' classes and options, trainer keys).
- vlmlab-data, vlmlab-report: the command's own option parser; vlmlab-data's overrides composed and validated.
- mlflow: MLflow's own command-line parser; `mlflow models serve` and the `printf`/`curl` lines after it run for real
  against a tiny registered model (the only process started: the scoring server).
- make TARGET: `make -n` (the target exists), the vlmlab commands it would run composed. torchrun: torch's parser,
  the module it starts composed. cd, source .venv/bin/activate: followed.
- vlmlab-import also runs for real, on a tiny LLaVA or Qwen2-VL standing for the example folder (EXAMPLE_INPUTS):
  the commands after it read the presets it writes.
- NOT_RUN: what cannot run here at all, with the reason. Anything else fails: a page cannot add an unchecked command.
```console blocks are commands that fail on purpose: run in this process, exit code 2, the shown lines printed.
A ```python or ```yaml block whose first line is `# <path>` is a file the commands read (written there); the
plug-in connector of docs/extending.md is also imported and called as the model builder calls it.

Cheap by design (imports are paid once; compositions take a fraction of a second): the file takes well under
90 s on a 2-core CPU machine.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
import requests
from omegaconf import OmegaConf
from PIL import Image

from tests.cli_in_process import BIN, REPO, run_main
from vlmlab.testing import free_port

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 300
KINDS = {"bash", "console", "python", "yaml", "text"}  # a block's info string: what it is
# The docs' placeholders and the values they stand for here; any other <...> is an error (<image> is a prompt's).
PLACEHOLDERS = {"<date>/<time>": "2026-12-01/10-00-00", "<run>": "outputs/2026-12-01/10-00-00", "<stage>": "instruct"}
PLACEHOLDERS |= {"<id>": "1", "<name>/<version>": "vlmlab-demo/1"}
NOT_PLACEHOLDERS = {"<image>"}
# Commands that cannot run on a test machine at all, each with the reason.
NOT_RUN = {
    "docker": "no Docker engine on the test machines (tests/test_docker_files.py checks the files)",
    "experiments/gpu/check.sh": "needs a CUDA machine (exit 3 without one); tests/test_gpu_check.py runs --dry-run",
}
SERVE_PORT = "5001"  # the port the serving example uses; a free one here
# Example inputs of commands that the test runs for real, and what stands for them (a `World` method).
EXAMPLE_INPUTS = {"/models/llava-1.5-7b-hf": "tiny_llava", "/models/Qwen2-VL-2B-Instruct": "tiny_qwen2_vl"}
HYDRA_COMMANDS = ("vlmlab-train", "vlmlab-eval", "vlmlab-generate", "vlmlab-chat", "vlmlab-export", "vlmlab-import")
OPERATORS = {"|", "||", "&&", ";", "&"}
REDIRECTIONS = {">", ">>", "<", "2>"}


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence
    kind: str
    text: str

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page (fences at the start of a line)."""
    text = page.read_text()
    found = []
    for match in re.finditer(r"^```(\S*)\n(.*?)^```\s*$", text, flags=re.M | re.S):
        found.append(Block(page, text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2)))
    return found


def command_lines(block: Block) -> list[str]:
    """A bash block's command lines: continuations joined, blank and comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block.text)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def substitute(line: str) -> str:
    """Placeholders replaced by real values; an unknown one fails."""
    for placeholder, value in PLACEHOLDERS.items():
        line = line.replace(placeholder, value)
    unknown = [p for p in re.findall(r"<[\w /-]+>", line) if p not in NOT_PLACEHOLDERS]
    assert not unknown, f"placeholder {unknown[0]} has no value in tests/test_docs.py PLACEHOLDERS: {line}"
    return line


@dataclass
class Command:
    env: dict[str, str]  # leading NAME=value assignments
    argv: list[str]
    redirects: list[str]


def split_line(line: str) -> list[Command]:
    """The simple commands of a line, split as the shell splits words (no expansion), at |, &&, ; ..."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, words = [], []
    for token in [*lexer, ";"]:
        if token in OPERATORS:
            if words:
                commands.append(words)
            words = []
        else:
            words.append(token)
    parsed = []
    for words in commands:
        env = {}
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        argv, redirects = [], []
        it = iter(words)
        for word in it:
            if word in REDIRECTIONS:
                redirects.append(next(it))
            else:
                argv.append(word)
        assert argv, f"no command in: {line}"
        parsed.append(Command(env, argv, redirects))
    return parsed


def program(argv0: str) -> str:
    """`.venv/bin/vlmlab-train` -> `vlmlab-train` (the docs' commands are the checkout's, or found on PATH)."""
    path = Path(argv0)
    if path.name.startswith(("vlmlab-", "mlflow")):
        assert str(path.parent) in (".", ".venv/bin"), f"{argv0}: give commands as .venv/bin/NAME or NAME"
        return path.name
    return argv0


def console_main(name: str) -> Callable[[], object]:
    """The function a vlmlab console script calls."""
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == name]
    return script.load()


def sweep(args: list[str]) -> Iterator[list[str]]:
    """A multirun's jobs: each `key=a,b,c` (commas outside brackets and braces) takes each value in turn."""
    choices = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and "," in value and value[:1] not in "[{":
            choices.append([f"{key}={v}" for v in value.split(",")])
        else:
            choices.append([arg])
    yield from (list(job) for job in itertools.product(*choices))


class World:
    """What the docs' commands read, made on first need and shared by the pages: a tiny model registered in a
    sqlite store, a tiny Hugging Face LLaVA folder."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.made = folder, {}

    def _once(self, name: str, make: Callable[[Path], Path]) -> Path:
        if name not in self.made:
            self.made[name] = make(self.folder / name)
        return self.made[name]

    def registered_store(self) -> Path:
        """mlflow.db holding `vlmlab-demo` version 1: a tiny vlmlab model logged as `logger.register_model` does."""
        return self._once("store", self._registered_store)

    def tiny_llava(self) -> Path:
        return self._once("tiny_llava", self._tiny_llava)

    def tiny_qwen2_vl(self) -> Path:
        return self._once("tiny_qwen2_vl", self._tiny_qwen2_vl)

    def _registered_store(self, folder: Path) -> Path:
        from mlflow.tracking import MlflowClient

        from vlmlab.inference.loading import LoadedModel, save_model_folder
        from vlmlab.models.builder import build_vlm
        from vlmlab.tracking.registry import log_model

        tokenizer().save_pretrained(folder / "tokenizer")
        llm = OmegaConf.load(REPO / "conf/model/llm/tiny_llama.yaml")
        llm.config.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
        llm.tokenizer = str(folder / "tokenizer")
        parts = {"encoder": "encoder/tiny_vit", "connector": "connector/mlp2x_gelu"}
        model_cfg = OmegaConf.create({p: OmegaConf.load(REPO / f"conf/model/{f}.yaml") for p, f in parts.items()})
        model_cfg.llm = llm
        model = build_vlm(model_cfg).eval()
        loaded = LoadedModel(model, OmegaConf.to_container(model_cfg), "resize", "test", folder)
        saved = save_model_folder(loaded, folder)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("vlmlab-demo")).info.run_id
        log_model(uri, run, saved, "vlmlab-demo")
        return folder / "mlflow.db"

    def _tiny_llava(self, folder: Path) -> Path:
        from tests.test_export import tiny_llava

        tiny_llava(tokenizer(), folder)
        return folder

    def _tiny_qwen2_vl(self, folder: Path) -> Path:
        from tests.test_qwen2_vl_interop import tiny_qwen2_vl

        tiny_qwen2_vl(tokenizer(), folder)
        return folder


def tokenizer():
    """The tests' tiny tokenizer (tests/conftest.py), trained when a world needs it."""
    from vlmlab.data.synthetic import tokenizer_corpus
    from vlmlab.models.llms.tiny_tokenizer import train_tiny_tokenizer

    return train_tiny_tokenizer(tokenizer_corpus(num_samples=200), vocab_size=300)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("world"))


@dataclass
class Session:
    """One page's shell: its folder, environment and the server it started."""

    page: Path
    cwd: Path
    world: World
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # the page's files: path -> text
    server: subprocess.Popen | None = None
    port: int | None = None

    def enter(self, folder: Path) -> None:
        """Go to `folder`, made as the page's commands expect: the page's files, the checkout's .venv, cat.png."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        if not (folder / ".venv").exists():
            (folder / ".venv").symlink_to(BIN.parent)
        Image.new("RGB", (64, 48), (200, 40, 40)).save(folder / "cat.png")
        self.cwd = folder

    def stop(self) -> None:
        if self.server is not None:
            try:
                os.killpg(self.server.pid, signal.SIGKILL)  # the server and the worker it started
            except ProcessLookupError:  # it had ended
                pass
            self.server.wait()
            self.server = None
        forget_plug_ins()

    def run_cli(self, name: str, args: list[str], env: dict[str, str]) -> tuple[int, str]:
        """`name args` in this process, from this folder, with the command's own environment assignments."""
        for key, value in env.items():
            if key == "PYTHONPATH":
                self.monkeypatch.syspath_prepend(str((self.cwd / value).resolve()))
            self.monkeypatch.setenv(key, value)
        self.capsys.readouterr()
        code, _ = run_main(console_main(name), name, args, self.cwd, self.monkeypatch)
        printed = self.capsys.readouterr()
        return code, printed.out + printed.err

    def shell(self, line: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", line], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )


def path_without_venv() -> str:
    """PATH without the virtual environment's bin: a command that needs it must activate it, as the docs say."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != BIN)


def expand(session: Session, word: str) -> str:
    word = word.replace("$PWD", str(session.cwd))
    assert "$" not in word, f"{word}: a shell expansion the test cannot make for a command it does not run"
    return word


def compose(session: Session, name: str, args: list[str], env: dict[str, str]) -> None:
    """A vlmlab Hydra command: composed by the real command line (`--cfg job`), each job of a sweep."""
    multirun = "-m" in args
    args = [expand(session, a) for a in args if a != "-m"]
    for job in sweep(args) if multirun else [args]:
        code, err = session.run_cli(name, [*job, "--cfg", "job"], env)
        assert code == 0, f"{name} {shlex.join(job)} does not compose (exit {code}):\n{err[-3000:]}"
        if name == "vlmlab-train":
            validate_train_config(session, job)


def validate_train_config(session: Session, overrides: list[str]) -> None:
    """vlmlab-train's preflight checks that depend neither on this machine nor on files."""
    from vlmlab.cli.data import compose_train_config
    from vlmlab.config import validate_config
    from vlmlab.models.component_check import check_model_components
    from vlmlab.preflight import check_trainer_keys
    from vlmlab.tracking.mlflow_runs import check_registration
    from vlmlab.training.run_record import stages_to_run
    from vlmlab.training.stage import stage_specs

    session.monkeypatch.chdir(session.cwd)
    cfg = compose_train_config([o for o in overrides if not o.startswith("hydra.run.dir=")])
    validate_config(cfg)
    stages_to_run(cfg, stage_specs(cfg))
    check_trainer_keys(cfg)
    if cfg.get("logger"):
        check_registration(cfg.logger.get("register_model"), cfg.logger.get("registered_model_name"))
    check_model_components(cfg.model)


def check_vlmlab_data(session: Session, args: list[str]) -> None:
    from vlmlab.cli.data import build_parser, compose_train_config
    from vlmlab.config import validate_config

    parsed = build_parser().parse_args(args)
    if parsed.command in ("check", "optimize"):
        overrides = [expand(session, o) for o in parsed.overrides if not o.startswith("output=")]
        session.monkeypatch.chdir(session.cwd)
        validate_config(compose_train_config(overrides))


def check_vlmlab_report(session: Session, args: list[str]) -> None:
    """The real command line, its work (reading MLflow) replaced by a stub that records what it was asked."""
    import vlmlab.cli.report as report

    asked = []

    def write_report(client, experiment, out, sweep_folder):
        asked.append((experiment, sweep_folder))
        (session.cwd / "report.md").write_text("| run |\n")
        return session.cwd / "report.md", session.cwd / "report.png", "0"

    session.monkeypatch.setattr(report, "write_report", write_report)
    session.monkeypatch.chdir(session.cwd)
    report.main(args)
    assert asked, f"vlmlab-report {shlex.join(args)} did not get to its work"


def check_mlflow(session: Session, args: list[str]) -> None:
    """Parsed by MLflow's own click commands (options and their values), not run."""
    from mlflow.cli import cli

    command, name, rest = cli, "mlflow", list(args)
    while isinstance(command, click.Group):
        assert rest, f"mlflow {shlex.join(args)}: no subcommand"
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"mlflow has no command {rest[0]!r}"
        command, name, rest = sub, rest[0], rest[1:]
    command.make_context(name, rest)


def serve(session: Session, line: str) -> None:
    """`mlflow models serve` for real, on a free port, from a folder holding the store with the registered model."""
    assert session.server is None, "the page starts a second server"
    store = session.world.registered_store()
    (session.cwd / "mlflow.db").write_bytes(store.read_bytes())
    session.port = free_port()
    line = line.replace(f"-p {SERVE_PORT}", f"-p {session.port}")
    with (session.cwd / "serve.log").open("w") as log:
        session.server = subprocess.Popen(
            ["bash", "-c", line], cwd=session.cwd, env=session.env, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{session.port}/ping", timeout=5).ok:
                return
        except requests.ConnectionError:
            pass
        if session.server.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{line} did not serve:\n{(session.cwd / 'serve.log').read_text()[-3000:]}")
        time.sleep(0.5)


def run_for_real(session: Session, line: str, commands: list[Command]) -> None:
    """A line of printf/curl: run by bash as written (a request to the page's server on its port)."""
    if any(c.argv[0] == "curl" for c in commands):
        assert session.server is not None, f"{line}: the page starts no server before it"
        line = line.replace(f"127.0.0.1:{SERVE_PORT}", f"127.0.0.1:{session.port}")
    result = session.shell(line)
    assert result.returncode == 0, f"{line}: exit {result.returncode}\n{result.stderr[-3000:]}"
    if commands[-1].argv[0] == "curl":
        answer = json.loads(result.stdout)
        assert isinstance(answer.get("predictions"), list) and answer["predictions"], f"{line}: {result.stdout}"


def check_command(session: Session, line: str) -> None:
    """One command line of a ```bash block, checked as the module docstring says."""
    line = substitute(line)
    commands = split_line(line)
    words = [w for c in commands for w in [*c.argv, *c.env.values()]]
    assert not any(w == "..." or w.endswith("=...") for w in words), f"`...` stands for nothing here: {line}"
    syntax = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{line}: {syntax.stderr}"
    if all(c.argv[0] in ("printf", "curl") for c in commands):
        return run_for_real(session, line, commands)
    for i, command in enumerate(commands):
        name, args = program(command.argv[0]), command.argv[1:]
        piped = i + 1 < len(commands)
        if name == "printf" and piped:
            continue  # the next command's input
        if name in NOT_RUN:
            if "/" in name:
                assert os.access(REPO / name, os.X_OK), f"{name} is not an executable file of the repository"
            continue
        if name == "cd":
            (target,) = args
            home = session.cwd.parent / "home"
            session.enter(home / target[2:] if target.startswith("~/") else session.cwd / target)
        elif name == "source":
            assert args == [".venv/bin/activate"], f"source {shlex.join(args)}: only the checkout's venv"
            result = session.shell("source .venv/bin/activate && env -0")
            assert result.returncode == 0, result.stderr
            session.env = dict(kv.split("=", 1) for kv in result.stdout.split("\0") if "=" in kv)
        elif name == "make":
            (target,) = args
            result = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True)
            assert result.returncode == 0, f"make {target}: {result.stderr}"
            for planned in result.stdout.splitlines():
                words = shlex.split(planned)
                if words and program(words[0]) in HYDRA_COMMANDS:
                    compose(session, program(words[0]), words[1:], {})
        elif name in HYDRA_COMMANDS:
            compose(session, name, args, command.env)
            if name == "vlmlab-import":
                import_for_real(session, args)
        elif name == "vlmlab-data":
            check_vlmlab_data(session, args)
        elif name == "vlmlab-report":
            check_vlmlab_report(session, args)
        elif name == "mlflow" and args[:2] == ["models", "serve"]:
            check_mlflow(session, args)
            serve(session, line)
        elif name == "mlflow":
            check_mlflow(session, args)
        elif name == "torchrun":
            from torch.distributed.run import get_args_parser

            parsed = get_args_parser().parse_args(args)
            assert parsed.module, f"{line}: torchrun starts vlmlab as a module (-m vlmlab.cli.<command>)"
            scripts = {e.value.split(":")[0]: e.name for e in entry_points(group="console_scripts")}
            compose(session, scripts[parsed.training_script], parsed.training_script_args, command.env)
        else:
            raise AssertionError(f"{line}: `{name}` is a command tests/test_docs.py does not know how to check")


def import_for_real(session: Session, args: list[str]) -> None:
    """vlmlab-import writes the presets later commands name: run it on the tiny model standing for the example."""
    source = next(a.partition("=")[2] for a in args if a.startswith("source="))
    stand_in = getattr(session.world, EXAMPLE_INPUTS[source])()
    args = [f"source={stand_in}" if a.startswith("source=") else a for a in args]
    code, err = session.run_cli("vlmlab-import", args, {})
    assert code == 0, err[-3000:]


def check_console(session: Session, block: Block) -> None:
    """`$ command` lines fail as shown: exit code 2, each shown line (`...`: any text) printed, in order."""
    import vlmlab.cli.train as train

    def reached_training(cfg):
        raise SystemExit(97)  # a documented failure that got past every check

    session.monkeypatch.setattr(train, "run_curriculum", reached_training)
    examples = re.split(r"^\$ ", block.text, flags=re.M)[1:]
    assert examples, f"{block.where()}: a console block shows `$ command` lines"
    for example in examples:
        line, *shown = example.rstrip("\n").split("\n")
        (command,) = split_line(line)
        name = program(command.argv[0])
        assert name in HYDRA_COMMANDS, f"{block.where()}: {name} in a console block"
        code, err = session.run_cli(name, command.argv[1:], command.env)
        printed = err.splitlines()
        assert code == 2, f"{block.where()}: `{line}` exits {code}, not 2:\n{err[-3000:]}"
        position = 0
        for expected in (s for s in shown if s.strip() != "..."):
            pattern = ".*".join(re.escape(part.strip()) for part in expected.strip().split("..."))
            matches = [i for i in range(position, len(printed)) if re.search(pattern, printed[i])]
            assert matches, f"{block.where()}: `{line}` no longer prints {expected!r}; it prints:\n" + "\n".join(
                printed
            )
            position = matches[0] + 1


def named_files(page: Path) -> dict[str, str]:
    """The page's ```python and ```yaml blocks whose first line names a file (`# my_pkg/projector.py`)."""
    files = {}
    for block in blocks(page):
        first = block.text.split("\n", 1)[0]
        match = re.fullmatch(r"# ([\w./-]+\.(?:py|yaml))", first)
        if block.kind in ("python", "yaml") and match:
            files[match.group(1)] = block.text
    if any(name.startswith("my_pkg/") for name in files):
        files["my_pkg/__init__.py"] = ""
    return files


@pytest.fixture
def session(request, world: World, tmp_path: Path, monkeypatch, capsys) -> Iterator[Session]:
    env = {**os.environ, "PATH": path_without_venv()}
    made = Session(request.param, tmp_path, world, monkeypatch, capsys, env, named_files(request.param))
    made.enter(tmp_path / "checkout")
    yield made
    made.stop()


@pytest.mark.parametrize("session", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES], indirect=True)
def test_every_command_of_the_page_runs_or_composes(session: Session) -> None:
    page_blocks = blocks(session.page)
    for block in page_blocks:
        assert block.kind in KINDS, f"{block.where()}: say what the block is: ```{' | '.join(sorted(KINDS))}"
        if block.kind == "bash":
            for line in command_lines(block):
                check_command(session, line)
        elif block.kind == "console":
            check_console(session, block)
    named = named_files(session.page)
    if "my_pkg/projector.py" in named:
        plug_in_connector_works(session)


def plug_in_connector_works(session: Session) -> None:
    """The plug-in of docs/extending.md, as the builder would call it: injected sizes in, fewer tokens out."""
    import torch

    forget_plug_ins()
    session.monkeypatch.syspath_prepend(str(session.cwd))
    connector = import_module("my_pkg.projector").StridedPoolConnector(in_dim=8, out_dim=6, num_in_tokens=9)
    assert connector.num_out_tokens == 2
    assert connector(torch.randn(3, 9, 8)).shape == (3, 2, 6)


def forget_plug_ins() -> None:
    """The page's plug-in package leaves this process's imports (tests/test_plugins.py has its own my_pkg)."""
    for name in [m for m in sys.modules if m == "my_pkg" or m.startswith("my_pkg.")]:
        del sys.modules[name]


def test_the_readme_is_a_manual_of_at_most_300_lines() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move a task to docs/"
    assert "make install" in "\n".join(lines)


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_resolve() -> None:
    """Every relative link of the README and docs/ names a file that exists, and a heading of it that exists."""
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.relative_to(REPO)}: the link {target} names no file"
            if anchor and linked.suffix == ".md":
                text = linked.read_text()
                headings = [github_anchor(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)]
                assert anchor in headings, f"{page.relative_to(REPO)}: {target}: no such heading in {path or 'it'}"


def test_the_not_run_list_is_short_and_used() -> None:
    """Each NOT_RUN entry is a command some page shows (so the list cannot outgrow the docs)."""
    used = set()
    for page in PAGES:
        for block in blocks(page):
            if block.kind == "bash":
                for line in command_lines(block):
                    used |= {c.argv[0] for c in split_line(substitute(line))}
    assert set(NOT_RUN) <= used, f"unused NOT_RUN entries: {set(NOT_RUN) - used}"


@pytest.mark.parametrize(
    "line, complaint",
    [
        (".venv/bin/vlmlab-train experiment=demo_quik", "does not compose"),  # a renamed preset
        (".venv/bin/vlmlab-train curriculum.stages.instruct.max_steps=abc", "takes int"),  # a value of the wrong type
        (".venv/bin/vlmlab-eval checkpoint=x limt=5", "does not compose"),  # a mistyped field
        (".venv/bin/vlmlab-data check --limits 5 data=vqav2", "SystemExit"),  # an option that does not exist
        (".venv/bin/mlflow ui --backend-store sqlite:///mlflow.db", "No such option"),
        ("rm -rf outputs", "does not know how to check"),  # a command nobody checks
        (".venv/bin/vlmlab-generate checkpoint=<runs>/stages/instruct", "has no value"),  # an unknown placeholder
    ],
)
def test_a_drifted_command_fails(line: str, complaint: str, world: World, tmp_path: Path, monkeypatch, capsys) -> None:
    """The checks can fail: what a stale page would hold is refused."""
    session = Session(REPO / "README.md", tmp_path, world, monkeypatch, capsys, dict(os.environ))
    session.enter(tmp_path / "checkout")
    with pytest.raises((AssertionError, SystemExit, Exception)) as failure:
        check_command(session, line)
    assert complaint in f"{failure.typename}: {failure.value}", failure.value
