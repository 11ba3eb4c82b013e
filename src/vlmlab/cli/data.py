"""`vlmlab-data`: dataset tools.

vlmlab-data synth --out DIR                   write the synthetic tasks
vlmlab-data check data=vqav2 data.root=/x     encode every record of a configured dataset and report
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from vlmlab.config import config_dir, validate_config
from vlmlab.data.synthetic import SynthConfig, write_synthetic_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmlab-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="write the synthetic captioning, VQA and document-QA tasks")
    synth.add_argument("--out", default="data/synthetic", help="output folder (default: data/synthetic)")
    for f in fields(SynthConfig):
        synth.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default, help=f"default: {f.default}")
    check = commands.add_parser(
        "check",
        help="scan a configured dataset: records, images found, problems by reason, token lengths",
        description="Stops at the first bad record with its file, id and the fix (data.on_bad_record=raise, the "
        "default here); with data.on_bad_record=skip it lists every problem by reason. The model config "
        "matters: its tokenizer and image token count set the lengths. Exits 1 when problems were found, 2 "
        "when it stopped at one.",
    )
    check.add_argument("--split", action="append", choices=["train", "val", "test"], help="default: every split")
    check.add_argument("--limit", type=int, default=None, help="check only the first N records of each split")
    check.add_argument("overrides", nargs="*", help="Hydra overrides, as for vlmlab-train (e.g. data=vqav2)")
    return parser


def compose_train_config(overrides: list[str]) -> DictConfig:
    """conf/train.yaml with the overrides, as `vlmlab-train` would compose it from this folder."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={Path.cwd()}", *overrides])


def check(overrides: list[str], splits: list[str] | None, limit: int | None) -> int:
    from vlmlab.data.chat_format import SampleError
    from vlmlab.data.check import check_datamodule, print_report
    from vlmlab.data.datamodule import VLMDataModule
    from vlmlab.models.builder import build_vlm

    # The report lists the problems: the per-record warnings that training logs would only repeat them.
    logging.getLogger("vlmlab.data.conversation_dataset").setLevel(logging.ERROR)
    cfg = compose_train_config(["data.on_bad_record=raise", *overrides])
    validate_config(cfg)
    datamodule = VLMDataModule.from_config(cfg.data, build_vlm(cfg.model), cfg.seed)
    datamodule.prepare_data()
    try:
        reports = check_datamodule(datamodule, splits or ("train", "val", "test"), limit)
    except SampleError as err:
        print(f"error: {err}\n(data.on_bad_record=skip lists every problem instead)", file=sys.stderr)
        return 2
    print_report(reports, cfg.data.max_length)
    return 1 if any(r.num_problems for r in reports) else 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        config = SynthConfig(**{f.name: getattr(args, f.name) for f in fields(SynthConfig)})
        manifest = write_synthetic_dataset(args.out, config)
        print(f"synthetic dataset in {manifest.parent} ({config})")
    elif args.command == "check":
        sys.exit(check(args.overrides, args.split, args.limit))


if __name__ == "__main__":
    main()
