"""`hf_seqplugins.plugins.rnn.{RNN, LSTM, GRU}` against `torch.nn`: same weights, same outputs and gradients."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from hf_seqplugins.plugins.rnn import GRU, LSTM, RNN

OURS = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}
CASES = [
    ("LSTM", {}),
    ("LSTM", {"proj_size": 3}),
    ("GRU", {}),
    ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"nonlinearity": "relu"}),
]


def build_pair(name, kwargs, dtype, backend="reference", batch_first=True, bias=True, seed=0):
    torch.manual_seed(seed)
    common = dict(
        input_size=5, hidden_size=6, num_layers=2, bidirectional=True, batch_first=batch_first, bias=bias, dtype=dtype
    )
    theirs = getattr(torch.nn, name)(**common, **kwargs)
    ours = OURS[name](**common, **kwargs, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def random_hx(name, module, batch, dtype):
    layers = module.num_layers * 2
    out_size = module.proj_size or module.hidden_size
    h = torch.randn(layers, batch, out_size, dtype=dtype, requires_grad=True)
    if name != "LSTM":
        return h
    return h, torch.randn(layers, batch, module.hidden_size, dtype=dtype, requires_grad=True)


def flat(result):
    output, state = result
    return [output, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("name, kwargs", CASES)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_matches_torch_nn_with_gradients(name, kwargs, batch_first, dtype, tol):
    theirs, ours = build_pair(name, kwargs, dtype, batch_first=batch_first)
    x = torch.randn(3, 7, 5, dtype=dtype)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    x.requires_grad_()
    hx = random_hx(name, theirs, 3, dtype)
    hx_leaves = list(hx) if isinstance(hx, tuple) else [hx]
    results = []
    for module in (theirs, ours):
        outputs = flat(module(x, hx))
        weights = torch.linspace(0.5, 1.5, outputs[0].shape[-1], dtype=dtype)
        loss = (outputs[0] * weights).sum() + sum(o.sum() for o in outputs[1:])
        grads = torch.autograd.grad(loss, [x, *hx_leaves, *module.parameters()])
        results.append((outputs, grads))
    for a, b in zip(results[1][0] + list(results[1][1]), results[0][0] + list(results[0][1])):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_triton_backend_matches_torch_nn(name):
    theirs, ours = build_pair(name, {}, torch.float32, backend="triton")
    x = torch.randn(2, 5, 5, requires_grad=True)
    results = []
    for module in (theirs, ours):
        outputs = flat(module(x))
        grads = torch.autograd.grad(sum(o.sum() for o in outputs), [x, *module.parameters()])
        results.append(outputs + list(grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_without_bias_and_without_hx():
    theirs, ours = build_pair("GRU", {}, torch.float64, bias=False)
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    for a, b in zip(flat(ours(x)), flat(theirs(x))):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_unbatched_input():
    theirs, ours = build_pair("LSTM", {"proj_size": 2}, torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    for a, b in zip(flat(ours(x)), flat(theirs(x))):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_state_dict_loads_both_ways_and_names_match():
    theirs, ours = build_pair("LSTM", {"proj_size": 3}, torch.float32)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    fresh = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True, proj_size=3)
    fresh.load_state_dict(ours.state_dict())


def test_torch_backend_uses_pytorch_fused_path_including_packed_sequences():
    theirs, ours = build_pair("LSTM", {}, torch.float32, backend="torch")
    x = torch.randn(3, 6, 5)
    packed = pack_padded_sequence(x, torch.tensor([6, 4, 2]), batch_first=True)
    out_ours, _ = ours(packed)
    out_theirs, _ = theirs(packed)
    assert torch.equal(out_ours.data, out_theirs.data)


def test_packed_sequence_with_operator_backend_is_refused():
    _, ours = build_pair("GRU", {}, torch.float32)
    packed = pack_padded_sequence(torch.randn(2, 3, 5), torch.tensor([3, 2]), batch_first=True)
    with pytest.raises(TypeError, match="PackedSequence.*backend 'torch'"):
        ours(packed)


def test_dropout_between_layers_in_training():
    torch.manual_seed(0)
    layer = LSTM(5, 6, num_layers=2, dropout=0.5, backend="reference").train()
    x = torch.randn(4, 2, 5)
    assert not torch.equal(layer(x)[0], layer(x)[0])
    layer.eval()
    assert torch.equal(layer(x)[0], layer(x)[0])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        LSTM(3, 4, backend="cudnn")
    layer = LSTM(3, 4, backend="reference")
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        layer(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="2 \\(unbatched\\) or 3 dimensions"):
        layer(torch.randn(2, 5, 3, 1))
