"""`vlmlab-report`: a comparison table and plot of the curriculum runs of an MLflow experiment.

vlmlab-report --experiment connector-ablation --sweep multirun/2026-11-25/10-00-00 --out report/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlflow.tracking import MlflowClient

from vlmlab.tracking.report import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="vlmlab-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", required=True, help="MLflow experiment (experiment_name of the runs)")
    parser.add_argument("--sweep", default=None, help="only the runs of this sweep (its folder, the runs' `sweep` tag)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow store (default: ./mlflow.db)")
    parser.add_argument("--out", default="report", help="folder for report.md and report.png (default: report)")
    args = parser.parse_args(argv)
    try:
        table, image, run_id = write_report(
            MlflowClient(args.tracking_uri), args.experiment, Path(args.out), args.sweep
        )
    except ValueError as err:
        parser.exit(2, f"vlmlab-report: {err}\n")
    print(table.read_text())
    print(f"wrote {table} and {image}; logged to MLflow run {run_id}")


if __name__ == "__main__":
    main()
