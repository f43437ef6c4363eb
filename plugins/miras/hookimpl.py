"""Entry point of the Miras plugin."""

from __future__ import annotations

from hf_seqplugins import Architecture, hookimpl, standard_model_classes

from . import modeling as m


@hookimpl
def seqplugins_architectures() -> list[Architecture]:
    return [
        Architecture(
            model_type="seqp_miras",
            config_class=m.MirasConfig,
            model_classes=standard_model_classes(m, "Miras"),
            api_version=1,
            tiny_config={
                "vocab_size": 32,
                "hidden_size": 16,
                "num_hidden_layers": 2,
                "intermediate_size": 32,
                "num_heads": 2,
                "memory_expansion": 2,
                "memory_chunk": 2,
                "conv_kernel_size": 2,
                "gate_rank": 4,
                # Yaad's smooth sign e / sqrt(e^2 + eps) has slope 1 / sqrt(eps) at 0: with the default 1e-6 it turns
                # float32 rounding into gradient differences beyond the suite's float32 tolerances
                "smooth_eps": 1e-3,
            },
            tiny_variants={
                "moneta": {"memory_variant": "moneta"},
                "memora": {"memory_variant": "memora"},
                "hybrid": {"swa_layers": [1], "swa_window": 3},
            },
            description="Miras (Moneta, Yaad, Memora): a per-head MLP memory trained online by an attentional bias "
            "with retention, chunk-parallel with the dual form; optional sliding-window attention blocks",
        )
    ]
