"""`JRTDataCollator`: batches for the JRT objective (`docs/architectures/jrt.md`)."""

from __future__ import annotations

import torch


class JRTDataCollator:
    """Pads token sequences on the right and builds the two label tensors of the JRT objective.

    For each sequence x (the first `enc_length` = M tokens are its encoder region), a fraction `mlm_probability`
    of the prefix tokens (positions < M) is replaced by `mask_token_id` in `input_ids`. Returns
    - `input_ids`, `attention_mask` `[B, L]` (padding: `pad_token_id`, mask 0);
    - `labels` `[B, L]`: transformers' unshifted next-token labels, ``labels[j] = x_j`` for j > M (predicted at
      the decoder positions j - 1 >= M), -100 at j <= M and at padding: the plain `labels` path of any causal LM
      scores exactly the decoder region;
    - `mlm_targets` `[B, L]`: the original token at each masked prefix position, -100 elsewhere (same position,
      no shift; `JRTForCausalLM` adds ``mlm_weight`` times their cross-entropy).

    Features are dicts with `input_ids` (a list of ints or a 1-d tensor). `seed` makes the masking reproducible.
    """

    def __init__(
        self,
        mask_token_id: int,
        enc_length: int,
        mlm_probability: float = 0.15,
        pad_token_id: int = 0,
        seed: int | None = None,
    ):
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or mask_token_id < 0:
            raise ValueError(f"JRTDataCollator: mask_token_id must be a token id >= 0, got {mask_token_id!r}")
        if isinstance(enc_length, bool) or not isinstance(enc_length, int) or enc_length < 0:
            raise ValueError(f"JRTDataCollator: enc_length must be an integer >= 0, got {enc_length!r}")
        if isinstance(mlm_probability, bool) or not 0 <= mlm_probability <= 1:
            raise ValueError(f"JRTDataCollator: mlm_probability must be in [0, 1], got {mlm_probability!r}")
        self.mask_token_id, self.enc_length, self.mlm_probability = mask_token_id, enc_length, mlm_probability
        self.pad_token_id = pad_token_id
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    @classmethod
    def from_config(cls, config, **kwargs) -> JRTDataCollator:
        """The collator of a `JRTConfig`: its mask_token_id, enc_length, mlm_probability and pad_token_id."""
        if config.mask_token_id is None:
            raise ValueError("JRTDataCollator: the config has no mask_token_id; set JRTConfig.mask_token_id")
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        return cls(config.mask_token_id, config.enc_length, config.mlm_probability, pad, **kwargs)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("JRTDataCollator: no features")
        rows = [torch.as_tensor(f["input_ids"], dtype=torch.long).flatten() for f in features]
        longest = max(len(r) for r in rows)
        batch = len(rows)
        tokens = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros(batch, longest, dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = row
            attention[i, : len(row)] = 1
        real = attention.bool()
        position = torch.arange(longest).expand(batch, longest)
        labels = torch.where(real & (position > self.enc_length), tokens, -100)
        draw = torch.rand(batch, longest, generator=self.generator) < self.mlm_probability
        masked = draw & real & (position < self.enc_length)
        mlm_targets = torch.where(masked, tokens, -100)
        input_ids = torch.where(masked, self.mask_token_id, tokens)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "mlm_targets": mlm_targets}
