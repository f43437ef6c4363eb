"""Parity with FlashRNN's `vanilla` backend (PyPI `flashrnn`), given the same weights."""

import pytest
import torch
from test_rnn_kernels import assert_backends_agree, make_inputs

from hf_seqplugins import BackendUnavailableError
from hf_seqplugins.kernels.rnn import headwise_rnn

pytest.importorskip("flashrnn", reason="flashrnn is in the `peers` extra")
pytestmark = pytest.mark.peers


@pytest.mark.parametrize("cell", ["elman_tanh", "lstm", "gru", "slstm"])
def test_flashrnn_vanilla_matches_reference(cell):
    assert_backends_agree(
        cell, make_inputs(cell, steps=7, heads=3, head_dim=4, scale=2.0), "flashrnn", atol=1e-12, rtol=1e-10
    )


def test_flashrnn_refuses_what_it_cannot_compute():
    inputs = make_inputs("lstm")
    with pytest.raises(BackendUnavailableError, match="padding"):
        headwise_rnn("lstm", **inputs, mask=torch.tensor([[0, 1, 1, 1, 1]] * 2, dtype=torch.bool), backend="flashrnn")
    with pytest.raises(BackendUnavailableError, match="no 'elman_relu'"):
        headwise_rnn("elman_relu", **make_inputs("elman_relu"), backend="flashrnn")
