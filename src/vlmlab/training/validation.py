"""`GenerationValidation`: generation-based validation inside training, as a Lightning callback."""

from __future__ import annotations

from typing import Any

import lightning as L
import mlflow
from lightning.pytorch.utilities import rank_zero_warn

from vlmlab.data.chat_format import to_messages
from vlmlab.data.conversation_dataset import record_images
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.image_processing import ImageLoadError, read_image
from vlmlab.eval.generation import generate_answers
from vlmlab.eval.metrics import build_metrics, metric_values, per_sample_values
from vlmlab.tracking.mlflow_runs import StageLogger
from vlmlab.training.distributed import is_sharded

THUMBNAIL = 128  # pixels, longest side of the images in the sample table


def question_of(record: dict[str, Any]) -> str:
    """The last user turn without its image placeholders: what the model was asked."""
    users = [m["content"] for m in to_messages(record["conversations"]) if m["role"] == "user"]
    return users[-1].replace("<image>", "").strip() if users else ""


def thumbnail(image: str | dict[str, Any]) -> mlflow.Image | None:
    """A small copy of a record's image for the MLflow table (None when it cannot be read)."""
    try:
        small = read_image(image)
    except ImageLoadError:
        return None
    small.thumbnail((THUMBNAIL, THUMBNAIL))
    return mlflow.Image(small)


class GenerationValidation(L.Callback):
    """After each validation pass, greedy-generates answers (batched, KV cache) for the first `limit`
    validation prompts of every source the stage trains on, split across processes, and logs each
    source's metrics as `val/<source>/<metric>` (synced across processes by torchmetrics). On rank 0,
    with an MLflow logger, the first `table_rows` samples go to the run as a table artifact
    `val_samples/<source>/step_<N>.json` (image, question, prediction, references, and the sample's score
    under each metric, e.g. `cider`, `bleu_4`, `vqa_accuracy`).

    Under a sharded strategy (FSDP, FSDP2) it does nothing but say so once: every forward pass of a
    sharded model is collective, and generation stops at different lengths on each process. `val/loss`
    still runs there; the stage's saved weights are scored with `vlmlab-eval`.
    """

    def __init__(self, limit: int | None = 64, max_new_tokens: int = 32, table_rows: int = 8) -> None:
        self.limit = limit
        self.max_new_tokens = max_new_tokens
        self.table_rows = table_rows
        self.warned = False

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if trainer.sanity_checking or not isinstance(datamodule, VLMDataModule) or not pl_module.objective.generates:
            return  # (a stage that does not train the LLM to answer, e.g. contrastive pretraining, is not scored so)
        if is_sharded(trainer.strategy):
            if not self.warned:
                rank_zero_warn("generation_validation is skipped under a sharded strategy (fsdp, fsdp2)")
                self.warned = True
            return
        for source in datamodule.mixture:
            spec = datamodule.sources[source]
            if spec.get("val") is None:
                continue
            loader = datamodule.prompt_dataloader(
                source, "val", limit=self.limit, shard=(trainer.global_rank, trainer.world_size)
            )
            rows = generate_answers(pl_module.model, loader, self.max_new_tokens, progress=False)
            scored = [r for r in rows if r["answers"]]
            for row in rows:
                row["scores"] = {}
            for name, metric in build_metrics(spec.get("metrics") or ["exact_match"]).items():
                metric = metric.to(pl_module.device)
                metric.update([r["prediction"] for r in scored], [r["answers"] for r in scored])
                for key, value in metric_values(name, metric).items():  # compute() gathers every process
                    pl_module.log(f"val/{source}/{key}", value, batch_size=max(1, len(scored)))
                per_sample = per_sample_values(name, metric)  # collective: gathered process by process
                if trainer.is_global_zero:  # rank 0's own rows come first
                    for row, values in zip(scored, per_sample):
                        row["scores"].update(values)
            if trainer.is_global_zero and isinstance(trainer.logger, StageLogger) and self.table_rows:
                self._log_table(trainer, datamodule, source, rows[: self.table_rows])

    @staticmethod
    def _log_table(trainer: L.Trainer, datamodule: VLMDataModule, source: str, rows: list[dict[str, Any]]) -> None:
        records = datamodule.records(source, "val")
        columns: dict[str, list[Any]] = {"id": [], "image": [], "question": [], "prediction": [], "references": []}
        score_names = sorted({name for row in rows for name in row["scores"]})
        for row in rows:
            for name in score_names:
                columns.setdefault(name, []).append(row["scores"].get(name))
            record = records[row["index"]]
            images = record_images(record)
            columns["id"].append(str(row["id"]))
            columns["image"].append(thumbnail(images[0]) if images else None)
            columns["question"].append(question_of(record))
            columns["prediction"].append(row["prediction"])
            columns["references"].append(" | ".join(row["answers"]))
        artifact = f"val_samples/{source}/step_{trainer.global_step:07d}.json"
        trainer.logger.experiment.log_table(trainer.logger.run_id, data=columns, artifact_file=artifact)
