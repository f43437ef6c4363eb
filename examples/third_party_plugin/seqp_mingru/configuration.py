from hf_seqplugins import SeqConfig

from .scan import MINGRU_SCAN


class MinGRUConfig(SeqConfig):
    """minGRU: `z = sigmoid(W_z x)`, `candidate = W_h x`, `h = (1 - z) h + z candidate`, width
    `expand * hidden_size`."""

    model_type = "seqp_mingru"
    operators = (MINGRU_SCAN,)

    def __init__(self, expand: int = 1, **kwargs):
        self.expand = expand
        super().__init__(**kwargs)

    def validate_fields(self):
        super().validate_fields()
        if not isinstance(self.expand, int) or self.expand < 1:
            raise ValueError(f"MinGRUConfig.expand must be an integer >= 1, got {self.expand!r}")
