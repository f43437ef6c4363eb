"""Entry point of the structured state-space plugin: S4, S4D and LSSL."""

from __future__ import annotations

from hf_seqplugins import Architecture, hookimpl, standard_model_classes

from . import modeling as m

TINY = {"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 2, "state_size": 8}


def _architecture(model_type, config_class, prefix, tiny, description) -> Architecture:
    return Architecture(
        model_type=model_type,
        config_class=config_class,
        model_classes=standard_model_classes(m, prefix),
        api_version=1,
        tiny_config={**TINY, **tiny},
        description=description,
    )


@hookimpl
def seqplugins_architectures() -> list[Architecture]:
    return [
        # l_max 8 < the suite's sequences, so the kernel-doubling path runs too
        _architecture(
            "seqp_s4",
            m.S4Config,
            "S4",
            {"l_max": 8},
            "S4: HiPPO-LegS diagonal plus low rank, Cauchy kernel + Woodbury, FFT convolution, recurrent decoding",
        ),
        _architecture(
            "seqp_s4d",
            m.S4DConfig,
            "S4D",
            {"channels": 2},
            "S4D: diagonal state space, Vandermonde kernel (ZOH or bilinear), FFT convolution, recurrent decoding",
        ),
        _architecture(
            "seqp_lssl",
            m.LSSLConfig,
            "LSSL",
            {"learn_ab": 1},
            "LSSL: dense HiPPO state space, bilinear discretisation, Krylov kernel, FFT convolution, "
            "recurrent decoding",
        ),
    ]
