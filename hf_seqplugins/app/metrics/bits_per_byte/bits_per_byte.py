"""Bits per byte (and per-byte perplexity) of a language model over a text."""

import math

import datasets
import evaluate

_DESCRIPTION = """Bits per byte: the summed negative log-likelihood (in nats) of the evaluated tokens divided
by ln(2) times the number of UTF-8 bytes they cover. Comparable across tokenizers. `perplexity` is 2 ** bpb."""
_INPUTS = """
Args:
    nll: per example, the summed negative log-likelihood in nats (e.g. mean token loss x token count).
    num_bytes: per example, the number of UTF-8 bytes the evaluated tokens cover.
Returns:
    bits_per_byte, perplexity (per byte).
"""


class BitsPerByte(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"nll": datasets.Value("float64"), "num_bytes": datasets.Value("int64")}),
        )

    def _compute(self, nll, num_bytes):
        total_bytes = sum(num_bytes)
        if total_bytes <= 0:
            raise ValueError("bits_per_byte needs a positive total number of bytes")
        bits = sum(nll) / math.log(2) / total_bytes
        return {"bits_per_byte": bits, "perplexity": 2.0**bits}
