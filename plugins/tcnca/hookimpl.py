"""Entry point of the TCNCA plugin."""

from __future__ import annotations

from hf_seqplugins import Architecture, hookimpl, standard_model_classes

from . import modeling as m


@hookimpl
def seqplugins_architectures() -> list[Architecture]:
    return [
        Architecture(
            model_type="seqp_tcnca",
            config_class=m.TCNCAConfig,
            model_classes=standard_model_classes(m, "TCNCA"),
            api_version=1,
            tiny_config={
                "vocab_size": 32,
                "hidden_size": 16,
                "num_hidden_layers": 2,
                "intermediate_size": 32,
                "zdim": 8,
                "hdim": 16,
                "chunk_size": 4,
                "tcn_kernel_size": 2,
                "tcn_dilation_factor": 2,
                "tcn_depth": 2,
            },
            description="TCNCA: MEGA's gated block with a dilated causal TCN instead of its EMA and chunked attention",
        )
    ]
