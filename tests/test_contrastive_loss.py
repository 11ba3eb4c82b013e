"""vlmlab's CLIP and SigLIP losses equal open_clip's (`open_clip.loss.ClipLoss`, `SigLipLoss`, open-clip-torch
3.3.0 from PyPI, computed in the test itself) on the same embeddings and parameters: the loss value and the
gradients of the embeddings, the scale and the bias, in one process and in each of 2 processes (gloo)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from vlmlab.eval.retrieval import RetrievalRecall
from vlmlab.models.contrastive_loss import clip_loss, siglip_loss
from vlmlab.testing import free_port

GLOBAL, DIM = 12, 16


def embeddings(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch of matching image and text embeddings (texts near their images, so the losses differ
    from chance), L2-normalised."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(GLOBAL, DIM, generator=generator)
    text = image + 0.8 * torch.randn(GLOBAL, DIM, generator=generator)
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def losses_and_grads(kind: str, rank: int = 0, world_size: int = 1) -> dict[str, dict[str, list]]:
    """For vlmlab's and open_clip's loss: the value and the gradients, on this process's share."""
    image, text = embeddings()
    share = slice(rank * GLOBAL // world_size, (rank + 1) * GLOBAL // world_size)
    results = {}
    for name in ("vlmlab", "open_clip"):
        local_image = image[share].clone().requires_grad_(True)
        local_text = text[share].clone().requires_grad_(True)
        scale = torch.tensor(math.log(10.0) if kind == "siglip" else math.log(1 / 0.07), requires_grad=True)
        bias = torch.tensor(-10.0, requires_grad=True)
        if kind == "siglip":
            reference = SigLipLoss(rank=rank, world_size=world_size)
            loss = (siglip_loss if name == "vlmlab" else reference)(local_image, local_text, scale.exp(), bias)
        else:
            reference = ClipLoss(rank=rank, world_size=world_size)
            loss = (
                clip_loss(local_image, local_text, scale.exp())
                if name == "vlmlab"
                else reference(local_image, local_text, scale.exp())
            )
        loss.backward()
        results[name] = {
            "loss": [loss.item()],
            "image": local_image.grad.flatten().tolist(),
            "text": local_text.grad.flatten().tolist(),
            "scale": [scale.grad.item()],
            "bias": [bias.grad.item() if bias.grad is not None else 0.0],
        }
    return results


def assert_equal(results: dict[str, dict[str, list]]) -> None:
    for key, expected in results["open_clip"].items():
        assert results["vlmlab"][key] == pytest.approx(expected, rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_one_process_equals_open_clip(kind: str) -> None:
    results = losses_and_grads(kind)
    assert_equal(results)
    assert results["vlmlab"]["loss"][0] > 0 and any(results["vlmlab"]["text"])


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {kind: losses_and_grads(kind, rank, 2) for kind in ("clip", "siglip")}
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_open_clip_and_use_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    single = {kind: losses_and_grads(kind) for kind in ("clip", "siglip")}
    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for kind in ("clip", "siglip"):
            assert_equal(results[kind])
        # CLIP: every process computes the global batch's loss; SigLIP: its images against all texts
        assert results["clip"]["vlmlab"]["loss"][0] == pytest.approx(single["clip"]["vlmlab"]["loss"][0], rel=1e-6)
    siglip_total = sum(
        json.loads((tmp_path / f"rank{r}.json").read_text())["siglip"]["vlmlab"]["loss"][0] for r in (0, 1)
    )
    assert siglip_total / 2 == pytest.approx(single["siglip"]["vlmlab"]["loss"][0], rel=1e-6)  # mean over processes


def test_retrieval_recall_counts_matches_in_the_top_k() -> None:
    metric = RetrievalRecall(ks=(1, 2))
    images = torch.eye(4)
    texts = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0.9, 0], [0, 0, 0, 1]])
    metric.update(images[:2], texts[:2])
    metric.update(images[2:], texts[2:])
    values = {k: v.item() for k, v in metric.compute().items()}
    # image 1 is closer to text 2 (0.74) than to its own text 1 (0), image 2 closer to text 1 (1) than to text 2
    # (0.67): each finds its match second; text 1 finds image 2 first, text 2 finds image 1 (0.74) first
    assert values["i2t_r1"] == pytest.approx(0.5) and values["i2t_r2"] == pytest.approx(1.0)
    assert values["t2i_r1"] == pytest.approx(0.5) and values["t2i_r2"] == pytest.approx(1.0)
