"""Entry point of the Universal Transformer plugin."""

from __future__ import annotations

from hf_seqplugins import Architecture, hookimpl, standard_model_classes

from . import modeling as m


@hookimpl
def seqplugins_architectures() -> list[Architecture]:
    return [
        Architecture(
            model_type="seqp_ut",
            config_class=m.UniversalTransformerConfig,
            model_classes={
                **standard_model_classes(m, "UniversalTransformer"),
                "AutoModelForSeq2SeqLM": m.UniversalTransformerForSeq2SeqLM,
            },
            api_version=1,
            tiny_config={
                "vocab_size": 32,
                "hidden_size": 16,
                "num_hidden_layers": 2,
                "intermediate_size": 32,
                "num_attention_heads": 2,
            },
            tiny_variants={
                "basic": {"recurrence_type": "basic"},
                "accumulated": {"act_type": "accumulated", "act_force_halt_at_max": True},
                "post_norm": {"norm_style": "post", "step_timing_signal_type": "sinusoid"},
            },
            description="Universal Transformer: one shared attention + feed-forward layer applied in depth, with "
            "adaptive computation time per position",
        )
    ]
