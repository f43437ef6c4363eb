"""Configs of the structured state-space models: S4 (DPLR), S4D (diagonal) and LSSL (dense),
`docs/architectures/s4.md`."""

from __future__ import annotations

from hf_seqplugins import SeqConfig, require_choice, require_positive_int
from hf_seqplugins.kernels.lti_ssm import OPERATOR as LTI_SSM

from .hippo import MEASURES

ACTIVATIONS = ("gelu", "silu", "relu", "tanh", "identity")
FINAL_ACTIVATIONS = ("glu", "linear")
S4D_INITS = ("diag-lin", "diag-inv", "diag-real", "legs")


class StateSpaceConfig(SeqConfig):
    """Fields of every S4-family layer. A block is ``x + Mixer(RMSNorm(x))`` (plus a SwiGLU feed-forward only if
    `intermediate_size` > 0); the mixer runs H = hidden_size independent SSMs:

    ``u -> SSM (kernel * u, or the recurrence) + D u -> activation -> dropout -> output linear (GLU)``.

    Args:
        state_size: N, the state size of each channel's SSM.
        channels: M, SSM outputs per channel (flattened to M * H before the output linear).
        bidirectional: add an anti-causal SSM (its own C) for sequence classification; not causal, so such
            models cannot generate and keep no cache (`use_cache` is set to False).
        dt_min, dt_max: the step Δ of each channel is initialised log-uniform in [dt_min, dt_max].
        activation: after the SSM and D skip: "gelu", "silu", "relu", "tanh" or "identity".
        final_act: "glu" (Linear(M H -> 2 H) then GLU) or "linear" (Linear(M H -> H)).
        ssm_dropout: dropout after the activation, one mask per channel for the whole sequence (tied over time).
        ssm_lr: learning rate of the SSM parameters (A, B, Δ), which never get weight decay; None = the global one.
            Used by `hf_seqplugins.core.optim.optimizer_cls_and_kwargs` (the Trainer hook).
    """

    model_type = "seqp_ssm_base"
    operators = (LTI_SSM,)

    def __init__(
        self,
        state_size: int = 64,
        channels: int = 1,
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        activation: str = "gelu",
        final_act: str = "glu",
        ssm_dropout: float = 0.0,
        ssm_lr: float | None = 1e-3,
        intermediate_size: int = 0,
        **kwargs,
    ):
        self.state_size = state_size
        self.channels = channels
        self.bidirectional = bidirectional
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.activation = activation
        self.final_act = final_act
        self.ssm_dropout = ssm_dropout
        self.ssm_lr = ssm_lr
        super().__init__(intermediate_size=intermediate_size, **kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        name = type(self).__name__
        require_positive_int(self, "state_size")
        require_positive_int(self, "channels")
        require_choice(self, "activation", ACTIVATIONS)
        require_choice(self, "final_act", FINAL_ACTIVATIONS)
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"{name}: need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if not 0.0 <= float(self.ssm_dropout) < 1.0:
            raise ValueError(f"{name}.ssm_dropout must be in [0, 1), got {self.ssm_dropout!r}")
        if self.ssm_lr is not None and not self.ssm_lr > 0:
            raise ValueError(f"{name}.ssm_lr must be None or > 0, got {self.ssm_lr!r}")
        if self.bidirectional:
            self.use_cache = False


class S4Config(StateSpaceConfig):
    """S4: A = Λ - P P* from HiPPO-LegS, bilinear discretisation, kernel by Cauchy sums + Woodbury.

    Args:
        rank: R, the rank of the low-rank correction (1 for LegS).
        n_ssm: number of independent (Λ, P, B) copies shared over the channels (H % n_ssm == 0); None = H.
        l_max: the kernel length the learned C̃ = C (I - Ā^L) refers to: train at or below it; longer inputs
            double the kernel (C̃ (I + Ā^L), a dense N x N power per channel) rather than change the model.
        dt_transform: Δ = exp(param) ("exp") or softplus(param) ("softplus").
        B_clip: the imaginary part of the initial B is clipped to [-B_clip, B_clip].
    """

    model_type = "seqp_s4"
    structure = "dplr"

    def __init__(
        self,
        rank: int = 1,
        n_ssm: int | None = None,
        l_max: int = 1024,
        dt_transform: str = "exp",
        B_clip: float = 2.0,
        init: str = "legs",
        discretization: str = "bilinear",
        **kwargs,
    ):
        self.rank = rank
        self.n_ssm = n_ssm
        self.l_max = l_max
        self.dt_transform = dt_transform
        self.B_clip = B_clip
        self.init = init
        self.discretization = discretization
        super().__init__(**kwargs)

    @property
    def num_ssm(self) -> int:
        return self.hidden_size if self.n_ssm is None else self.n_ssm

    def validate_fields(self) -> None:
        super().validate_fields()
        name = type(self).__name__
        require_positive_int(self, "rank")
        require_positive_int(self, "l_max")
        require_choice(self, "dt_transform", ("exp", "softplus"))
        if self.n_ssm is not None:
            require_positive_int(self, "n_ssm")
            if self.hidden_size % self.n_ssm:
                raise ValueError(f"{name}: hidden_size ({self.hidden_size}) must be a multiple of n_ssm ({self.n_ssm})")
        if self.state_size % 2:
            raise ValueError(
                f"{name}.state_size must be even (complex modes come in conjugate pairs), got {self.state_size}"
            )
        if not self.B_clip > 0:
            raise ValueError(f"{name}.B_clip must be > 0, got {self.B_clip!r}")
        if self.structure == "dplr":
            require_choice(self, "init", ("legs",))
            require_choice(self, "discretization", ("bilinear",))
        else:
            require_choice(self, "init", S4D_INITS)
            require_choice(self, "discretization", ("zoh", "bilinear"))


class S4DConfig(S4Config):
    """S4D: diagonal Λ (init "diag-lin", "diag-inv", "diag-real" or "legs"), ZOH or bilinear
    discretisation, kernel by a Vandermonde product. `rank` and `l_max` are unused."""

    model_type = "seqp_s4d"
    structure = "diagonal"

    def __init__(self, init: str = "diag-lin", discretization: str = "zoh", **kwargs):
        super().__init__(init=init, discretization=discretization, **kwargs)


class LSSLConfig(StateSpaceConfig):
    """LSSL: a dense HiPPO A per layer, generalised bilinear discretisation, Krylov kernel.

    Args:
        measure: the HiPPO measure of A and B: "legs" or "legt".
        learn_ab: 0 keeps A and B fixed (recomputed, not stored), 1 learns one (A, B) for all channels,
            2 one per channel.
        ab_lr: learning rate of A and B when learned (no weight decay).
        dt_learn: whether Δ is learned (with learning rate `ssm_lr`, no weight decay).
        dt_init: "random" (log-uniform) or "uniform" (log-spaced) initial Δ over the channels.
        alpha: α of the generalised bilinear transform: 0 forward Euler, 0.5 bilinear, 1 backward Euler.
    """

    model_type = "seqp_lssl"

    def __init__(
        self,
        measure: str = "legs",
        learn_ab: int = 0,
        ab_lr: float = 1e-4,
        dt_learn: bool = True,
        dt_init: str = "random",
        alpha: float = 0.5,
        **kwargs,
    ):
        self.measure = measure
        self.learn_ab = learn_ab
        self.ab_lr = ab_lr
        self.dt_learn = dt_learn
        self.dt_init = dt_init
        self.alpha = alpha
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        name = type(self).__name__
        require_choice(self, "measure", tuple(MEASURES))
        require_choice(self, "learn_ab", (0, 1, 2))
        require_choice(self, "dt_init", ("random", "uniform"))
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"{name}.alpha must be in [0, 1], got {self.alpha!r}")
        if not self.ab_lr > 0:
            raise ValueError(f"{name}.ab_lr must be > 0, got {self.ab_lr!r}")
