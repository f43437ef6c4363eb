"""ParaRNN (`docs/architectures/pararnn.md`): nonlinear RNNs with diagonal Jacobians, trained by parallel Newton
iterations."""

from .cells import CELLS, ParaCell, ParaGRUCell, ParaLSTMCell, SLSTMDiagCell, register_cell
from .configuration import ParaRNNConfig
from .modeling import ParaRNNForCausalLM, ParaRNNForSequenceClassification, ParaRNNMixer, ParaRNNModel

__all__ = [
    "CELLS",
    "ParaCell",
    "ParaGRUCell",
    "ParaLSTMCell",
    "ParaRNNConfig",
    "ParaRNNForCausalLM",
    "ParaRNNForSequenceClassification",
    "ParaRNNMixer",
    "ParaRNNModel",
    "SLSTMDiagCell",
    "register_cell",
]
