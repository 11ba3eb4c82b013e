"""`vlmlab-data`: dataset tools. `vlmlab-data synth --out DIR` writes the synthetic tasks."""

from __future__ import annotations

import argparse
from dataclasses import fields

from vlmlab.data.synthetic import SynthConfig, write_synthetic_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmlab-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="write the synthetic captioning, VQA and document-QA tasks")
    synth.add_argument("--out", default="data/synthetic", help="output folder (default: data/synthetic)")
    for f in fields(SynthConfig):
        synth.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default, help=f"default: {f.default}")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        config = SynthConfig(**{f.name: getattr(args, f.name) for f in fields(SynthConfig)})
        manifest = write_synthetic_dataset(args.out, config)
        print(f"synthetic dataset in {manifest.parent} ({config})")


if __name__ == "__main__":
    main()
