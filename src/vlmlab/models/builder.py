"""Builds a `VisionLanguageModel` from the `model` config, injecting the dimensions the user never types."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from vlmlab.models.component_check import check_model_components
from vlmlab.models.connectors.base import Connector
from vlmlab.models.encoders.base import VisionEncoder
from vlmlab.models.encoders.native_resolution import NativeResolutionEncoder
from vlmlab.models.llms.language_model import LanguageModel
from vlmlab.models.vlm import VisionLanguageModel

log = logging.getLogger(__name__)


def build_connector(
    factory: Callable[..., Connector], encoder: VisionEncoder | NativeResolutionEncoder, llm: LanguageModel
) -> Connector:
    """Call a connector class (or partial) with the encoder's and LLM's dims, checking the contract. A
    native-resolution encoder's images give any number of tokens: its connector must map each token alone
    (`num_in_tokens` is then the most an image gives)."""
    target = getattr(factory, "func", factory)
    name = f"{target.__module__}.{target.__qualname__}" if hasattr(target, "__qualname__") else str(target)
    native = isinstance(encoder, NativeResolutionEncoder)
    tokens = encoder.token_layout.max_tokens if native else encoder.num_patches
    try:
        connector = factory(in_dim=encoder.output_dim, out_dim=llm.hidden_size, num_in_tokens=tokens)
    except TypeError as err:
        raise TypeError(
            f"connector {name} could not be built with in_dim, out_dim and num_in_tokens ({err}); a connector's "
            "__init__ must accept these three (vlmlab passes them) and take its own options from its YAML"
        ) from err
    if not isinstance(connector, Connector):
        raise TypeError(f"connector {name} must subclass vlmlab.models.connectors.Connector")
    if native:
        if not maps_each_token_alone(connector):
            raise ValueError(
                f"connector {name} does not map each token alone, which a native-resolution encoder needs (its "
                "images give different numbers of tokens); use model/connector=linear or mlp2x_gelu"
            )
        return connector
    unused = unused_patches(connector)
    if unused:
        log.warning(
            "connector %s uses %d of the encoder's %d patches: patch(es) %s never reach its output (a stride or "
            "a grid that does not divide %d?); the image tokens miss that part of every image",
            name,
            connector.num_in_tokens - len(unused),
            connector.num_in_tokens,
            ", ".join(map(str, unused[:10])) + (" ..." if len(unused) > 10 else ""),
            connector.num_in_tokens,
        )
    return connector


@contextmanager
def probing(connector: Connector, tokens: int) -> Iterator[tuple[torch.Tensor, torch.Generator]]:
    """Random features [1, tokens, in_dim] in the connector's dtype and the generator that drew them (its own: the
    global random state is left as it was), with the connector in eval mode until the block ends."""
    generator = torch.Generator().manual_seed(0)
    parameter = next(connector.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    features = torch.randn(1, tokens, connector.in_dim, generator=generator, dtype=dtype)
    was_training = connector.training
    connector.eval()
    try:
        yield features, generator
    finally:
        connector.train(was_training)


def maps_each_token_alone(connector: Connector) -> bool:
    """Whether the connector takes any number of tokens and each output token depends on its own input token
    only: on random features of 3 and 5 tokens it gives as many, and the 3 are the first 3 of the 5."""
    if any(p.is_meta for p in connector.parameters()):
        return True  # checked when built with weights
    with probing(connector, 5) as (features, _), torch.no_grad():
        try:
            five, three = connector(features), connector(features[:, :3])
        except (RuntimeError, ValueError):  # a connector of a fixed grid or token count
            return False
    return five.shape[1] == 5 and three.shape[1] == 3 and torch.allclose(five[:, :3], three, atol=1e-6)


def unused_patches(connector: Connector) -> list[int]:
    """The input positions that no output of `connector` depends on: the gradient of a random mix of its outputs
    is zero there (one forward and backward on random features, in eval mode, with a generator of its own: the
    global random state is left as it was). [] when every patch counts, or when nothing reaches the output at
    all (a zero-initialised layer) or the weights are not materialised."""
    if any(p.is_meta for p in connector.parameters()):
        return []
    with probing(connector, connector.num_in_tokens) as (features, generator), torch.enable_grad():
        features.requires_grad_(True)
        out = connector(features)
        mix = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        (grad,) = torch.autograd.grad((out * mix).sum(), features, allow_unused=True)
    if grad is None:
        return []
    reached = grad[0].abs().sum(-1) > 0
    return [] if not reached.any() else [i for i, hit in enumerate(reached.tolist()) if not hit]


def build_vlm(model_cfg: DictConfig) -> VisionLanguageModel:
    """Instantiate encoder and LLM, then the connector between them (its YAML sets `_partial_: true`);
    `model.image_newline: true` adds LLaVA-NeXT's row-end token to the connector."""
    check_model_components(model_cfg)
    log.info("encoder: %s", model_cfg.encoder._target_)
    encoder = instantiate(model_cfg.encoder)
    log.info("llm: %s", model_cfg.llm._target_)
    llm = instantiate(model_cfg.llm)
    if llm.uses_mrope and not isinstance(encoder, NativeResolutionEncoder):
        raise ValueError(
            "the LLM takes M-RoPE positions (Qwen2-VL's), which place each image's tokens on its grid: it needs a "
            "native-resolution encoder (model/encoder=tiny_qwen2_vl, qwen2_vl_2b or an imported Qwen2-VL's)"
        )
    log.info("connector: %s", model_cfg.connector._target_)
    connector = build_connector(instantiate(model_cfg.connector, _partial_=True), encoder, llm)
    if model_cfg.get("image_newline", False):
        if isinstance(encoder, NativeResolutionEncoder):
            raise ValueError("model.image_newline ends the rows of tiled images; a native-resolution encoder has none")
        connector.add_image_newline()
    if isinstance(encoder, NativeResolutionEncoder):
        log.info(
            "vision features: each image at its own shape, up to %d tokens x %d -> image tokens x %d",
            encoder.token_layout.max_tokens,
            encoder.output_dim,
            llm.hidden_size,
        )
    else:
        log.info(
            "vision features %d x %d -> %d image tokens x %d",
            encoder.num_patches,
            encoder.output_dim,
            connector.num_out_tokens,
            llm.hidden_size,
        )
    return VisionLanguageModel(encoder, connector, llm)
