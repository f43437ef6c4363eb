"""Helpers for checkpoint converters between a plugin and a transformers model of the same architecture
(see `plugins/xlstm/convert.py`, `plugins/mamba2/convert.py`)."""

from __future__ import annotations

import copy
import os
from typing import NoReturn

import torch
from transformers import PreTrainedModel


def refuse(config, field: str, why: str) -> NoReturn:
    """Raise the ValueError of a field one side of a conversion cannot represent, naming the field and its value."""
    raise ValueError(f"{type(config).__name__}.{field}={getattr(config, field)!r} cannot be converted: {why}")


def load_complete(
    model_class: type[PreTrainedModel], model_or_path, loader_class=None, **from_pretrained_kwargs
) -> PreTrainedModel:
    """`model_or_path` itself when it is a `model_class`, else `(loader_class or model_class).from_pretrained(
    model_or_path, **kwargs)`, refused (ValueError) unless the checkpoint has exactly the model's keys: a converter
    must not invent weights."""
    if isinstance(model_or_path, model_class):
        if from_pretrained_kwargs:
            raise TypeError(
                f"from_pretrained arguments {sorted(from_pretrained_kwargs)} apply to a path, not to a model instance"
            )
        return model_or_path
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise TypeError(
            f"expected a {model_class.__name__}, a folder or a Hub repo id, got {type(model_or_path).__name__}"
        )
    model, info = (loader_class or model_class).from_pretrained(
        model_or_path, output_loading_info=True, **from_pretrained_kwargs
    )
    if info["missing_keys"] or info["unexpected_keys"]:
        raise ValueError(
            f"{model_or_path} is not a complete {model_class.__name__} checkpoint: missing keys "
            f"{sorted(info['missing_keys'])}, unexpected keys {sorted(info['unexpected_keys'])}"
        )
    return model


def build_with_weights(
    model_class: type[PreTrainedModel], config, state_dict: dict[str, torch.Tensor], like: PreTrainedModel
):
    """`model_class(config)` holding copies of `state_dict`'s tensors (built on the meta device: no random init, no
    second allocation), with `like`'s generation config and train/eval mode."""
    with torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(
        {key: tensor.detach().clone() for key, tensor in state_dict.items()}, strict=True, assign=True
    )
    model.tie_weights()
    model.generation_config = copy.deepcopy(like.generation_config)
    return model.train(like.training)
