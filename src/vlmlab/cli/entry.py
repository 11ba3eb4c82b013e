"""How every Hydra-based vlmlab command starts and fails.

- Free text (a prompt, a system message) is taken from the command line as typed, before Hydra's override
  grammar sees it: `prompt=<image> or <image>: which is brighter?` would otherwise fail on the colon,
  a comma or an apostrophe.
- A user's mistake (`UsageError`, or the error types a command declares as the user's) is one line on
  stderr, `vlmlab-<command>: ...`, and exit code 2; so is a Hydra composition error (an unknown option,
  a bad override), which Hydra itself reports with exit code 1. The run folder Hydra made for a command
  stopped that way is removed when it holds nothing but Hydra's own files.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vlmlab.config import config_dir
from vlmlab.errors import USAGE_EXIT_CODE, UsageError


def usage_error(command: str, err: BaseException | str) -> NoReturn:
    """Report a user's mistake as one line and exit with the usage-error code."""
    print(f"{command}: {err}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT_CODE)


def remove_unused_run_folder() -> None:
    """A command stopped by a usage error leaves no empty run folder under outputs/ (nor an empty date folder)."""
    folder = Path(HydraConfig.get().runtime.output_dir)
    if folder.resolve() == Path.cwd().resolve() or not folder.is_dir():
        return
    if {p.name for p in folder.iterdir()} <= {".hydra", f"{HydraConfig.get().job.name}.log"}:
        shutil.rmtree(folder)
        try:
            folder.parent.rmdir()  # only when empty
        except OSError:
            pass


def take_free_text(argv: Sequence[str], keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Split `key=value` arguments whose key is in `keys` off `argv`, their values verbatim. A value in
    brackets (`image=[a.png,b.png]`) stays a Hydra list."""
    rest, taken = [], {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in keys and not (value.startswith("[") and value.endswith("]")):
            taken[key] = value
        else:
            rest.append(arg)
    return rest, taken


def set_free_text(cfg: DictConfig, values: dict[str, str]) -> None:
    """Put verbatim values into the composed config; `${` is escaped so that it stays text."""
    with open_dict(cfg):
        for key, value in values.items():
            cfg[key] = value.replace("${", "\\${")


def hydra_command(
    command: str,
    config_name: str,
    body: Callable[[DictConfig], Any],
    user_errors: tuple[type[BaseException], ...] = (UsageError,),
    free_text: Sequence[str] = (),
) -> Callable[[], Any]:
    """The console-script entry point of a command: Hydra composes `config_name` from the command line,
    `body` does the work; `user_errors` raised by it are reported as usage errors."""

    def main() -> Any:
        argv, verbatim = take_free_text(sys.argv[1:], free_text)
        sys.argv[1:] = argv
        started = False

        def task(cfg: DictConfig) -> Any:
            nonlocal started
            started = True
            set_free_text(cfg, verbatim)
            try:
                return body(cfg)
            except user_errors as err:
                remove_unused_run_folder()
                usage_error(command, err)

        # Hydra names the job (and its log file, train.log) after the task function's module: the command's
        # (under `python -m vlmlab.cli.train`, as torchrun starts it, that module is __main__).
        module = body.__module__
        if module == "__main__" and getattr(sys.modules["__main__"], "__spec__", None) is not None:
            module = sys.modules["__main__"].__spec__.name
        task.__module__ = module
        try:
            return hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(task)()
        except SystemExit as exit_:
            if not started and exit_.code == 1:  # Hydra could not compose the config; it printed why
                raise SystemExit(USAGE_EXIT_CODE) from None
            raise

    return main
