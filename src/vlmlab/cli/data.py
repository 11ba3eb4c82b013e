"""`vlmlab-data`: dataset tools.

vlmlab-data synth --out DIR                   write the synthetic tasks
vlmlab-data check data=vqav2 data.root=/x     encode every record of a configured dataset and report
vlmlab-data optimize data=llava data.root=/x output=s3://bucket/llava
                                              write each source/split as LitData chunks for streaming

Exit codes of check: 0 no problem, 1 problems found (listed), 2 a usage error (a bad option, a file that
does not exist: one line naming it), 3 stopped at the first bad record (data.on_bad_record=raise).
optimize exits 0 when written or up to date (bad records left out, listed), 2 and 3 as check.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlmlab.cli.entry import usage_error
from vlmlab.config import validate_config
from vlmlab.data.synthetic import ALL_TASKS, SynthConfig, write_synthetic_dataset
from vlmlab.errors import UsageError
from vlmlab.presets import config_dir

PROBLEMS_FOUND = 1
STOPPED_AT_BAD_RECORD = 3
# data options the check's outcome depends on (with the model config): part of optimize's input fingerprint
CHECK_SETTINGS = ("max_length", "image_resize", "anyres", "on_bad_record")


def add_selection(parser: argparse.ArgumentParser, verb: str) -> None:
    """--split, --source and --limit: which part of the data config a command goes through."""
    parser.add_argument("--split", action="append", choices=["train", "val", "test"], help="default: every split")
    parser.add_argument("--source", action="append", help=f"{verb} only this source of the data config (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help=f"{verb} only the first N records of each split")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmlab-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="write the synthetic captioning, VQA and document-QA tasks")
    synth.add_argument("--out", default="data/synthetic", help="output folder (default: data/synthetic)")
    demo = SynthConfig.demo()  # the defaults: conf/data/synthetic.yaml
    for f in fields(SynthConfig):
        default = getattr(demo, f.name)
        kind = {"nargs": "+", "choices": ALL_TASKS} if f.name == "tasks" else {"type": int}
        synth.add_argument(f"--{f.name.replace('_', '-')}", **kind, default=default, help=f"default: {default}")
    check = commands.add_parser(
        "check",
        help="scan a configured dataset: records, images found, problems by reason, token lengths",
        description="Stops at the first bad record with its file, id and the fix (data.on_bad_record=raise, the "
        "default here); with data.on_bad_record=skip it lists every problem by reason. The model config "
        "matters: its tokenizer and image token count set the lengths. Exits 0 when clean, 1 when problems "
        "were found, 2 on a usage error (a bad option, a missing file), 3 when it stopped at a bad record.",
    )
    add_selection(check, "check")
    check.add_argument("--json", action="store_true", help="print the report as JSON (every problem id) on stdout")
    check.add_argument("overrides", nargs="*", help="Hydra overrides, as for vlmlab-train (e.g. data=vqav2)")
    optimize = commands.add_parser(
        "optimize",
        help="write each source/split of a data config as LitData chunks (a folder or s3:// URL) for streaming",
        description="Checks every record as `check` does (bad ones are listed and left out), then writes the kept "
        "ones with their image bytes to <output>/<source>/<split> with litdata.optimize. A split already written "
        "from the same input is left as it is. Train from it with data.shards=<output> (every source) or a "
        "source's format: streaming.",
    )
    add_selection(optimize, "write")
    optimize.add_argument("--workers", type=int, default=None, help="writer processes (default: one per CPU, max 8)")
    optimize.add_argument("--chunk-bytes", default="64MB", help="target size of a chunk file (default: 64MB)")
    optimize.add_argument(
        "overrides", nargs="*", help="output=<folder or URL> (required), then Hydra overrides as for vlmlab-train"
    )
    return parser


def compose_train_config(overrides: list[str]) -> DictConfig:
    """conf/train.yaml with the overrides, as `vlmlab-train` would compose it from this folder."""
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose("train", overrides=[f"paths.root_dir={Path.cwd()}", *overrides])
    except (HydraException, OmegaConfBaseException) as err:
        raise UsageError(str(err).replace("\n", "; ")) from err


def prepared_datamodule(
    overrides: list[str], splits: list[str] | None, sources: list[str] | None
) -> tuple[DictConfig, Any, list[tuple[str, str]]]:
    """The composed config, its data module (for the model's tokenizer and image tokens) and the (source, split)
    pairs to go through, after the preflight checks (missing files named before anything is built)."""
    from vlmlab.data.check import splits_to_check
    from vlmlab.data.datamodule import VLMDataModule
    from vlmlab.models.builder import build_vlm
    from vlmlab.preflight import check_data_files, check_model_weights

    # The report lists the problems: the per-record warnings that training logs would only repeat them.
    logging.getLogger("vlmlab.data.conversation_dataset").setLevel(logging.ERROR)
    cfg = compose_train_config(overrides)
    validate_config(cfg)
    unknown = [s for s in sources or [] if s not in cfg.data.sources]
    if unknown:
        raise UsageError(f"--source {unknown[0]}: not a source of this data config ({', '.join(cfg.data.sources)})")
    pairs = splits_to_check(
        OmegaConf.to_container(cfg.data.sources, resolve=True), splits or ("train", "val", "test"), sources
    )
    check_data_files(cfg, pairs)  # before the model (and its tokenizer) is built
    check_model_weights(cfg.model)
    datamodule = VLMDataModule.from_config(cfg.data, build_vlm(cfg.model), cfg.seed)
    datamodule.prepare_data()
    return cfg, datamodule, pairs


def check(
    overrides: list[str], splits: list[str] | None, sources: list[str] | None, limit: int | None, as_json: bool
) -> int:
    from vlmlab.data.chat_format import SampleError
    from vlmlab.data.check import check_datamodule, print_report, report_dict

    cfg, datamodule, pairs = prepared_datamodule(["data.on_bad_record=raise", *overrides], splits, sources)
    try:
        reports = check_datamodule(datamodule, pairs, limit)
    except SampleError as err:
        print(f"error: {err}\n(data.on_bad_record=skip lists every problem instead)", file=sys.stderr)
        return STOPPED_AT_BAD_RECORD
    if as_json:
        print(json.dumps(report_dict(reports, cfg.data.max_length), indent=1))
    else:
        print_report(reports, cfg.data.max_length)
    return PROBLEMS_FOUND if any(r.num_problems for r in reports) else 0


def optimize(args: argparse.Namespace) -> int:
    from vlmlab.data.chat_format import SampleError
    from vlmlab.data.check import print_report
    from vlmlab.data.datamodule import default_num_workers
    from vlmlab.data.optimize import optimize_split

    outputs = [o.split("=", 1)[1] for o in args.overrides if o.startswith("output=")]
    if not outputs or not outputs[-1]:
        raise UsageError("say where to write: output=<folder or URL> (e.g. output=/data/shards or s3://bucket/x)")
    overrides = [o for o in args.overrides if not o.startswith("output=")]
    cfg, datamodule, pairs = prepared_datamodule(["data.on_bad_record=skip", *overrides], args.split, args.source)
    settings = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": {k: OmegaConf.to_container(cfg.data, resolve=True).get(k) for k in CHECK_SETTINGS},
    }
    workers = args.workers or default_num_workers()
    results = []
    try:
        for source, split in pairs:
            print(f"{source}/{split}: checking and writing ...", flush=True)
            result = optimize_split(
                datamodule, source, split, outputs[-1], settings, workers, args.chunk_bytes, args.limit
            )
            results.append(result)
            left_out = result.records - result.kept
            state = "up to date" if result.up_to_date else "written"
            print(
                f"{source}/{split}: {state}, {result.kept} of {result.records} records ({left_out} left out) "
                f"in {result.folder}"
            )
    except SampleError as err:
        print(f"error: {err}\n(data.on_bad_record=skip leaves bad records out instead)", file=sys.stderr)
        return STOPPED_AT_BAD_RECORD
    reports = [r.report for r in results if r.report is not None and r.report.num_problems]
    if reports:
        print_report(reports, cfg.data.max_length)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        config = SynthConfig(**{f.name: getattr(args, f.name) for f in fields(SynthConfig)})
        manifest = write_synthetic_dataset(args.out, config)
        print(f"synthetic dataset in {manifest.parent} ({config})")
    elif args.command == "check":
        try:
            sys.exit(check(args.overrides, args.split, args.source, args.limit, args.json))
        except (UsageError, FileNotFoundError) as err:
            usage_error("vlmlab-data check", err)
    elif args.command == "optimize":
        try:
            sys.exit(optimize(args))
        except (UsageError, FileNotFoundError) as err:
            usage_error("vlmlab-data optimize", err)


if __name__ == "__main__":
    main()
