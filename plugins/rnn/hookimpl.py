"""Entry point of the RNN family (declared in pyproject.toml like any third-party plugin's)."""

from __future__ import annotations

from hf_seqplugins import Architecture, hookimpl, standard_model_classes

from . import modeling as m

TINY = {"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 2, "intermediate_size": 32, "num_heads": 2}


def _architecture(model_type, config_class, prefix, description, **tiny_overrides) -> Architecture:
    return Architecture(
        model_type=model_type,
        config_class=config_class,
        model_classes=standard_model_classes(m, prefix),
        api_version=1,
        tiny_config={**TINY, **tiny_overrides},
        description=description,
    )


@hookimpl
def seqplugins_architectures() -> list[Architecture]:
    return [
        _architecture("seqp_elman", m.ElmanConfig, "Elman", "Elman RNN (tanh or ReLU), dense or head-wise"),
        _architecture("seqp_lstm", m.LSTMConfig, "LSTM", "LSTM, dense or FlashRNN head-wise block-diagonal"),
        _architecture("seqp_gru", m.GRUConfig, "GRU", "GRU, dense or FlashRNN head-wise block-diagonal"),
        _architecture(
            "seqp_slstm", m.SLSTMConfig, "SLSTM", "sLSTM: exponential gating with normalizer and stabilizer (xLSTM)"
        ),
    ]
