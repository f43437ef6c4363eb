"""Entry point of the JRT-RNN plugin."""

from __future__ import annotations

from hf_seqplugins import Architecture, hookimpl, standard_model_classes

from . import modeling as m


@hookimpl
def seqplugins_architectures() -> list[Architecture]:
    return [
        Architecture(
            model_type="seqp_jrt",
            config_class=m.JRTConfig,
            model_classes=standard_model_classes(m, "JRT"),
            api_version=1,
            # enc_length 3: every prompt of the conformance suite (3 to 9 tokens) covers the encoder region
            tiny_config={
                "vocab_size": 32,
                "hidden_size": 16,
                "num_hidden_layers": 3,
                "intermediate_size": 32,
                "num_heads": 2,
                "enc_length": 3,
                "feature_dim": 4,
                "pla_layers": [0],
                "swa_layers": [1],
                "swa_window": 4,
                "conv_expand": 2,
                "chunk_size": 4,
                "mask_token_id": 31,
            },
            description="JRT-RNN: prefix linear attention (encoder over the prefix + causal Taylor linear "
            "attention), sliding-window attention and gated short convolutions",
        )
    ]
