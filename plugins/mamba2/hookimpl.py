"""Entry point of the Mamba-2 plugin."""

from __future__ import annotations

from hf_seqplugins import Architecture, hookimpl

from . import modeling as m


@hookimpl
def seqplugins_architectures() -> list[Architecture]:
    return [
        Architecture(
            model_type="seqp_mamba2",
            config_class=m.Mamba2Config,
            model_classes={
                "AutoModel": m.Mamba2Model,
                "AutoModelForCausalLM": m.Mamba2ForCausalLM,
                "AutoModelForSequenceClassification": m.Mamba2ForSequenceClassification,
            },
            api_version=1,
            tiny_config={
                "vocab_size": 32,
                "hidden_size": 16,
                "num_hidden_layers": 3,
                "head_dim": 8,
                "state_size": 8,
                "n_groups": 2,
                "chunk_size": 4,
                "conv_kernel": 3,
                # a hybrid: the suite then also covers attention blocks and the mixed KV/recurrent cache
                "attention_layers": [1],
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            },
            description="Mamba-2 (SSD): chunked state-space duality, with Stuffed Mamba's state-collapse options",
        )
    ]
