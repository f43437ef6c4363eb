"""Entry point of the xLSTM plugin."""

from __future__ import annotations

from hf_seqplugins import Architecture, hookimpl

from . import modeling as m


@hookimpl
def seqplugins_architectures() -> list[Architecture]:
    return [
        Architecture(
            model_type="seqp_xlstm",
            config_class=m.XLSTMConfig,
            model_classes={
                "AutoModel": m.XLSTMModel,
                "AutoModelForCausalLM": m.XLSTMForCausalLM,
                "AutoModelForSequenceClassification": m.XLSTMForSequenceClassification,
            },
            api_version=1,
            tiny_config={
                "vocab_size": 32,
                "hidden_size": 16,
                "num_hidden_layers": 2,
                "num_heads": 2,
                "block_pattern": "ms",
                "slstm_num_heads": 2,
                "chunk_size": 4,
                "intermediate_size": 32,
            },
            description=(
                "xLSTM: mLSTM matrix memory (xLSTM-7B block, TFLA chunkwise kernels), mixable with sLSTM blocks"
            ),
        )
    ]
