import torch
from torch import nn

from hf_seqplugins import SeqForCausalLM, SeqForSequenceClassification, SeqModel, read_state, write_state

from .configuration import MinGRUConfig
from .scan import MINGRU_SCAN


class MinGRUMixer(nn.Module):
    """hidden `[B, T, D]` -> gate and candidate `[B, T, expand*D]` -> scan -> out_proj -> `[B, T, D]`."""

    def __init__(self, config: MinGRUConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        inner = config.expand * config.hidden_size
        self.in_proj = nn.Linear(config.hidden_size, 2 * inner)
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=False)

    def forward(self, hidden, cache=None, attention_mask=None, resets=None):
        gate_pre, candidate = self.in_proj(hidden).chunk(2, dim=-1)
        state = read_state(cache, self.layer_idx)
        outputs, final = MINGRU_SCAN(
            torch.sigmoid(gate_pre),
            candidate,
            None if state is None else state[0],
            attention_mask,
            backend=self.config.kernel_backend,
            resets=resets,
        )
        write_state(cache, self.layer_idx, (final,))
        return self.out_proj(outputs)


class MinGRUModel(SeqModel):
    config_class = MinGRUConfig
    mixer_class = MinGRUMixer


class MinGRUForCausalLM(SeqForCausalLM):
    config_class = MinGRUConfig
    backbone_class = MinGRUModel


class MinGRUForSequenceClassification(SeqForSequenceClassification):
    config_class = MinGRUConfig
    backbone_class = MinGRUModel
