"""Optimizer parameter groups honouring per-parameter settings, for `Trainer` or a hand-made optimizer.

State-space parameters want their own treatment (`docs/architectures/s4.md`, section 'Optimizer settings'): S4's A, B
and Δ get a small learning rate and no weight decay. A module declares this with a method ``optimizer_settings() ->
{parameter name: {"lr": ..., "weight_decay": ...}}`` (read at optimizer creation, so it survives `from_pretrained`,
PEFT wrapping and dtype changes, which may replace parameter objects). Every other parameter follows `Trainer`'s
rule: weight decay except for biases and norms.

    trainer = Trainer(model=model, args=args, train_dataset=...,
                      optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model, args))
"""

from __future__ import annotations

from torch import nn
from transformers import Trainer, TrainingArguments

__all__ = ["optimizer_cls_and_kwargs", "parameter_groups"]


def _declared_settings(model: nn.Module) -> dict[int, dict]:
    declared = {}
    for module in model.modules():
        settings = getattr(module, "optimizer_settings", None)
        if callable(settings):
            for name, options in settings().items():
                declared[id(getattr(module, name))] = dict(options)
    return declared


def parameter_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict]:
    """Groups of trainable parameters: those with declared settings grouped by them, the rest split as `Trainer`
    does (`weight_decay` except for biases and norms). Groups without "lr" use the optimizer's learning rate."""
    declared = _declared_settings(model)
    # Trainer's own decay rule; the method reads nothing from the instance
    decay = set(Trainer.get_decay_parameter_names(None, model))
    groups: dict[tuple, dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        options = declared.get(id(parameter), {"weight_decay": weight_decay if name in decay else 0.0})
        key = tuple(sorted(options.items()))
        groups.setdefault(key, {**options, "params": []})["params"].append(parameter)
    return list(groups.values())


def optimizer_cls_and_kwargs(model: nn.Module, args: TrainingArguments) -> tuple[type, dict]:
    """`Trainer`'s optimizer for `args` (class and keyword arguments, e.g. AdamW with args' betas and learning rate)
    over `parameter_groups(model, args.weight_decay)`; pass it as `Trainer(optimizer_cls_and_kwargs=...)`."""
    optimizer_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return optimizer_class, {**kwargs, "params": parameter_groups(model, args.weight_decay)}
