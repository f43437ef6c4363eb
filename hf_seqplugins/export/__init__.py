"""Publishing: self-contained remote code, model cards and Hub pushes.

Importing it registers the remote-code writer with `SeqPreTrainedModel.save_pretrained` (`core.modeling.SAVE_HOOKS`).
"""

from __future__ import annotations

from ..core.modeling import SAVE_HOOKS
from .hub import PushError, push_to_hub
from .model_card import render_model_card
from .remote_code import export, write_remote_code

__all__ = ["PushError", "export", "push_to_hub", "render_model_card", "write_remote_code"]

if write_remote_code not in SAVE_HOOKS:
    SAVE_HOOKS.append(write_remote_code)
