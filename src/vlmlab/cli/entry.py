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

import difflib
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from vlmlab.errors import USAGE_EXIT_CODE, UsageError
from vlmlab.presets import config_dir


def shown_path(path: str | Path) -> str:
    """`path` as a printed command names it: relative to the working directory when it lies below it (so that
    the command still runs after the project folder moved), else absolute."""
    path, cwd = Path(path).resolve(), Path.cwd().resolve()
    if not path.is_relative_to(cwd) or cwd == Path(cwd.anchor):
        return str(path)
    return str(path.relative_to(cwd))


def invocation(command: str) -> str:
    """How to start the console script `command` (e.g. `vlmlab-eval`) as this process's own script was started, so
    that a printed command runs as printed from the same folder: its bare name where the shell finds that very
    script, else its path (relative to the working directory when it lies below it)."""
    script = Path(sys.argv[0])
    if not script.name.startswith("vlmlab-"):  # started as `python -m vlmlab.cli...` (torchrun)
        return command
    path = (script.parent / command).resolve()
    found = shutil.which(command)
    if found is not None and Path(found).resolve() == path:
        return command
    shown = shown_path(path)
    return shown if "/" in shown else f"./{shown}"


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


def unknown_field(config_name: str, overrides: Sequence[str]) -> str | None:
    """What is wrong with the first `key=value` override whose key the composed config does not have, with the
    closest field as a suggestion; found before Hydra would answer with its `+` advice (one compose, ~0.2 s).
    None when every such key exists, or when the config does not compose (Hydra then says why)."""
    plain = [o for o in overrides if "=" in o and not o.startswith(("+", "~", "hydra.")) and "/" not in o.split("=")[0]]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            fields = [o for o in plain if not loader.get_group_options(o.partition("=")[0])]  # not a group choice
            if not fields:
                return None
            groups = {o.partition("=")[0].partition(".")[0] for o in fields}
            presets = {g: options for g in groups if (options := loader.get_group_options(g))}
            cfg = compose(config_name, overrides=[o for o in overrides if o not in fields])
    except Exception:
        return None
    finally:
        GlobalHydra.instance().clear()
    for override in fields:
        key = override.partition("=")[0]
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None, throw_on_resolution_failure=False) if parent else cfg
        group = key.partition(".")[0]
        if node is None and group not in cfg and group in presets:  # a group left null, e.g. vlmlab-eval's data
            return (
                f"{key}: no {group} preset is chosen here ({group}: null), so it has no fields to set; choose one "
                f"first, e.g. {group}={presets[group][0]} {key}=..."
            )
        if not isinstance(node, DictConfig) or leaf in node.keys():  # keys() resolves no interpolation
            continue  # present, or a parent that is missing too (Hydra names it)
        names = [str(k) for k in node]
        close = difflib.get_close_matches(leaf, names, n=1, cutoff=0.6)
        where = parent or "the config"
        suggestion = f"did you mean {'.'.join(filter(None, [parent, close[0]]))}? " if close else ""
        listing = f"({where} has {', '.join(names)}); " if parent else ""
        return f"{key} is not a field of {where}: {suggestion}{listing}a new field is added with +{key}=..."
    return None


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
        mistake = unknown_field(config_name, [a for a in argv if "=" in a or a.startswith("~")])  # not --cfg job
        if mistake is not None:
            usage_error(command, mistake)
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
