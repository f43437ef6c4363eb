"""Use hf-seqplugins' LSTM as a drop-in for torch.nn.LSTM in a plain PyTorch model, and switch its kernel.

    python examples/drop_in_layer.py

The layer has torch.nn.LSTM's arguments and parameter names, so existing weights load unchanged;
`backend` picks the implementation ("torch": PyTorch's fused kernel; "reference": the plain loop;
"triton": the fused GPU kernel).
"""

import torch
from torch import nn

from hf_seqplugins import use_backend
from hf_seqplugins.plugins.rnn import LSTM


class Tagger(nn.Module):
    """A bidirectional LSTM tagger: token ids [B, T] -> tag logits [B, T, tags]."""

    def __init__(self, vocab=100, hidden=32, tags=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = LSTM(hidden, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, ids):
        return self.head(self.lstm(self.embed(ids))[0])


torch.manual_seed(0)
model = Tagger()
ids = torch.randint(0, 100, (4, 12))

# Weights from a model built with torch.nn.LSTM load as they are.
original = nn.LSTM(32, 32, num_layers=2, bidirectional=True, batch_first=True)
model.lstm.load_state_dict(original.state_dict())
print("loaded torch.nn.LSTM weights:", torch.allclose(model.lstm(model.embed(ids))[0], original(model.embed(ids))[0]))

# The same function through another backend, chosen for a block of code.
fused = model(ids)
with use_backend("reference"):
    loop = model(ids)
print(f"fused vs reference loop: max difference {(fused - loop).abs().max():.2e}")

# Train it like any module.
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
targets = ids % 5
for _ in range(30):
    loss = nn.functional.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"tagging loss after 30 steps: {loss.item():.3f}")
