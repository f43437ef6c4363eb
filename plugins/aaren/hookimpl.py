"""Entry point of the Aaren plugin."""

from __future__ import annotations

from hf_seqplugins import Architecture, hookimpl, standard_model_classes

from . import modeling as m


@hookimpl
def seqplugins_architectures() -> list[Architecture]:
    return [
        Architecture(
            model_type="seqp_aaren",
            config_class=m.AarenConfig,
            model_classes={
                **standard_model_classes(m, "Aaren"),
                "AutoModelForTimeSeriesPrediction": m.AarenForTimeSeriesPrediction,
            },
            api_version=1,
            tiny_config={
                "vocab_size": 32,
                "hidden_size": 16,
                "num_hidden_layers": 2,
                "intermediate_size": 32,
                "num_heads": 2,
                "chunk_size": 4,
            },
            description="Aaren: attention as a many-to-many RNN (learned query per head, softmax-weighted prefix scan)",
        )
    ]
