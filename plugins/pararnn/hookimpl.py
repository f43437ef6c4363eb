"""Entry point of the ParaRNN plugin."""

from __future__ import annotations

from hf_seqplugins import Architecture, hookimpl
from hf_seqplugins.kernels.linear_scan.newton import NewtonStatsCallback

from . import modeling as m


@hookimpl
def seqplugins_architectures() -> list[Architecture]:
    return [
        Architecture(
            model_type="seqp_pararnn",
            config_class=m.ParaRNNConfig,
            model_classes={
                "AutoModel": m.ParaRNNModel,
                "AutoModelForCausalLM": m.ParaRNNForCausalLM,
                "AutoModelForSequenceClassification": m.ParaRNNForSequenceClassification,
            },
            api_version=1,
            tiny_config={
                "vocab_size": 32,
                "hidden_size": 16,
                "num_hidden_layers": 2,
                "intermediate_size": 32,
                "num_heads": 2,
                "cell": "lstm_cifg",
                "newton_tolerance": 1e-6,
                "newton_max_iterations": 12,
            },
            description=(
                "ParaRNN: ParaGRU / ParaLSTM trained in parallel over the sequence by Newton iterations and scans"
            ),
            trainer_callbacks=(NewtonStatsCallback,),
        )
    ]
