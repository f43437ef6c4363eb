"""Base config shared by every architecture: backbone sizes, the kernel backend and validation."""

from __future__ import annotations

from transformers import PreTrainedConfig

from .backends import AUTO, DEFAULT, backend_choices


class SeqConfig(PreTrainedConfig):
    """Fields every `seqp_` architecture shares; a plugin subclasses it and adds its mixer's fields.

    Args:
        vocab_size: number of token ids.
        hidden_size: width of the residual stream.
        num_hidden_layers: number of blocks (mixer + optional feed-forward).
        intermediate_size: width of the gated (SwiGLU) feed-forward; 0 leaves it out of the blocks.
        norm_eps: epsilon of the RMSNorms.
        hidden_dropout: dropout on each residual branch while training.
        initializer_range: std of the normal init of embeddings and linear layers.
        kernel_backend: "auto", a backend every operator of the architecture has, or per operator
            ``"mlstm:parallel,headwise_rnn:torch"`` (or a dict operator -> backend); see
            `hf_seqplugins.available_architectures()` for each operator's backends.
        num_input_channels, prediction_length: channels of the real-valued series and steps forecast by the
            time-series head (`SeqForTimeSeriesPrediction`); unused by the text heads.
        ngram_layers: indices of blocks whose mixer is an n-gram head (`hf_seqplugins.core.ngram.NGramHead`)
            instead of the architecture's own; such a model needs `input_ids` (not `inputs_embeds`).
        ngram_orders: the order n of each n-gram layer (a list as long as `ngram_layers`), or one int for all.
    """

    model_type = "seqp_base"
    # The kernel `Operator`s the mixer runs (unannotated: v5 turns annotated class attributes into fields).
    operators = ()

    def __init_subclass__(cls, **kwargs):
        # transformers 5 turns every config subclass into a dataclass whose generated __init__ would
        # replace the inherited one (dropping its defaults and validation): inherit it explicitly.
        if "__init__" not in cls.__dict__:
            cls.__init__ = cls.__mro__[1].__init__
        super().__init_subclass__(**kwargs)

    def __init__(
        self,
        vocab_size: int = 256,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        intermediate_size: int = 512,
        norm_eps: float = 1e-5,
        hidden_dropout: float = 0.0,
        initializer_range: float = 0.02,
        kernel_backend: str = AUTO,
        use_cache: bool = True,
        num_input_channels: int = 1,
        prediction_length: int = 1,
        ngram_layers: list[int] = (),
        ngram_orders: int | list[int] = 1,
        tie_word_embeddings: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size
        self.norm_eps = norm_eps
        self.hidden_dropout = hidden_dropout
        self.initializer_range = initializer_range
        self.kernel_backend = kernel_backend
        self.use_cache = use_cache
        self.num_input_channels = num_input_channels
        self.prediction_length = prediction_length
        self.ngram_layers = list(ngram_layers)
        self.ngram_orders = ngram_orders if isinstance(ngram_orders, int) else list(ngram_orders)
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
        self.validate_fields()

    @property
    def layer_types(self) -> list[str]:
        """Cache layout for `DynamicCache(config=...)`: one recurrent-state slot per block."""
        return ["linear_attention"] * self.num_hidden_layers

    def validate_fields(self) -> None:
        """Raise ValueError naming the field and what is allowed. Subclasses extend it with `super()`."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers"):
            require_positive_int(self, name)
        require_positive_int(self, "intermediate_size", allow_zero=True)
        for name in ("num_input_channels", "prediction_length"):  # time-series heads
            require_positive_int(self, name)
        if not 0.0 <= float(self.hidden_dropout) < 1.0:
            raise ValueError(f"{type(self).__name__}.hidden_dropout must be in [0, 1), got {self.hidden_dropout!r}")
        value = self.initializer_range
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"{type(self).__name__}.initializer_range must be a finite number >= 0, got {value!r}")
        if not float(self.norm_eps) > 0:
            raise ValueError(f"{type(self).__name__}.norm_eps must be > 0, got {self.norm_eps!r}")
        self._validate_ngram_layers()
        choices = backend_choices(self.kernel_backend) if isinstance(self.kernel_backend, (str, dict)) else None
        if choices is None:
            raise ValueError(
                f"{type(self).__name__}.kernel_backend must be a string or a dict, got {self.kernel_backend!r}"
            )
        if not self.operators and set(choices.values()) != {AUTO}:
            raise ValueError(
                f"{type(self).__name__}.kernel_backend must be 'auto': this architecture runs no sequence operator, "
                f"got {self.kernel_backend!r}"
            )
        by_name = {operator.name: operator for operator in self.operators}
        for key, backend in choices.items():
            if key != DEFAULT and key not in by_name:
                raise ValueError(
                    f"{type(self).__name__}.kernel_backend names operator {key!r}, which this architecture does not "
                    f"run; its operators: {sorted(by_name)}"
                )
            for operator in by_name.values() if key == DEFAULT else [by_name[key]]:
                if backend != AUTO and backend not in operator.backends:
                    raise ValueError(
                        f"{type(self).__name__}.kernel_backend {backend!r} is not a backend of operator "
                        f"{operator.name!r}; it has {sorted(operator.backends)} (or 'auto'); per operator: "
                        f"'{operator.name}:<backend>,...'"
                    )

    def ngram_order(self, layer_idx: int) -> int | None:
        """The n-gram order of block `layer_idx`, None where the block keeps the architecture's mixer."""
        if layer_idx not in self.ngram_layers:
            return None
        orders = self.ngram_orders
        return orders if isinstance(orders, int) else orders[self.ngram_layers.index(layer_idx)]

    def _validate_ngram_layers(self) -> None:
        name, layers = type(self).__name__, self.ngram_layers
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_hidden_layers for i in layers):
            raise ValueError(
                f"{name}.ngram_layers must be block indices in [0, {self.num_hidden_layers}), got {layers!r}"
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"{name}.ngram_layers lists a block twice: {layers!r}")
        orders = [self.ngram_orders] if isinstance(self.ngram_orders, int) else self.ngram_orders
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in orders) or (
            not isinstance(self.ngram_orders, int) and len(orders) != len(layers)
        ):
            raise ValueError(
                f"{name}.ngram_orders must be an integer >= 1 or one such integer per entry of ngram_layers "
                f"({len(layers)}), got {self.ngram_orders!r}"
            )
        not_recurrent = [i for i in layers if self.layer_types[i] != "linear_attention"]
        if not_recurrent:
            raise ValueError(
                f"{name}.ngram_layers {not_recurrent} are {self.layer_types[not_recurrent[0]]!r} blocks of this "
                "config (e.g. attention layers of a hybrid); an n-gram head replaces a recurrent block only"
            )


def require_positive_int(config: PreTrainedConfig, name: str, allow_zero: bool = False) -> None:
    value = getattr(config, name)
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{type(config).__name__}.{name} must be an integer >= {low}, got {value!r}")


def require_choice(config: PreTrainedConfig, name: str, choices) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{name} must be one of {list(choices)}, got {value!r}")
