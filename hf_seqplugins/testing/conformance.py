"""The conformance suite, parametrized over every registered architecture (`model_type` fixture).

Each test builds a tiny model (`tiny_config`) and checks one contract of the framework (`docs/operators.md`,
`docs/writing-a-plugin.md`): forward and backward, backend parity with `reference`, prefill + O(1) decoding
equal to a full forward, greedy `generate()`, constant cache size, beam search, left padding, packed
(padding-free) batches, save/load, PEFT LoRA, `Trainer`, gradient checkpointing and config validation.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DataCollatorWithFlattening, DynamicCache

from ..core.backends import BackendUnavailableError, use_backend
from ..core.registry import load_plugins
from . import tiny_config

CONFORMANCE_ENV_VAR = "HF_SEQPLUGINS_CONFORMANCE"


# Options of the shared backbone that change what a block computes, run as extra cases "<model_type>+<variant>"
# on the architectures listed with them (an architecture's own such settings are its `tiny_variants`).
VARIANTS = {"ngram": ({"ngram_layers": [0], "ngram_orders": 2}, ("seqp_gru", "seqp_aaren"))}


def _model_types() -> list[str]:
    selected = {t.strip() for t in os.environ.get(CONFORMANCE_ENV_VAR, "").split(",") if t.strip()}
    architectures = load_plugins()
    registered = sorted(t for t in architectures if not selected or t in selected)
    variants = [f"{t}+{name}" for name, (_, bases) in VARIANTS.items() for t in bases if t in registered]
    own = [f"{t}+{name}" for t in registered for name in architectures[t].tiny_variants]
    return registered + variants + own


def _split(model_type: str) -> tuple[str, dict]:
    """A case's registered model type and the config overrides of its variant."""
    base, _, variant = model_type.partition("+")
    if not variant:
        return base, {}
    own = load_plugins()[base].tiny_variants
    return base, own[variant] if variant in own else VARIANTS[variant][0]


def _architecture(model_type: str):
    return load_plugins()[_split(model_type)[0]]


def _config(model_type: str, **overrides):
    base, variant = _split(model_type)
    return tiny_config(base, **{**variant, **overrides})


def pytest_generate_tests(metafunc):
    if "model_type" in metafunc.fixturenames:
        metafunc.parametrize("model_type", _model_types())


def _causal_lm(model_type: str, seed: int = 0, **overrides):
    # A larger init than the default makes outputs depend on history, so a lost recurrent state shows.
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_config(model_type, **{"initializer_range": 0.3, **overrides})).eval()


def _tokens(config, batch: int = 2, length: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def _cache_bytes(cache, growing: list[int] = ()) -> int:
    """Bytes of the recurrent and conv states (a hybrid's attention layers, whose KV cache grows, left out, and
    the `growing` layers: n-gram heads, whose table grows with the distinct n-grams seen)."""
    return sum(
        t.numel() * t.element_size()
        for index, layer in enumerate(cache.layers)
        if hasattr(layer, "recurrent_states") and index not in growing
        for states in (layer.recurrent_states, layer.conv_states)
        for t in states.values()
        if t is not None
    )


def _logits_with_embeddings(model, ids: torch.Tensor, change, **kwargs) -> torch.Tensor:
    """Logits of `ids` with `change(embeddings)` in place of their embeddings: a hook on the embedding layer, so
    mixers that read the token ids too (n-gram heads) still get them."""
    handle = model.get_input_embeddings().register_forward_hook(lambda module, args, output: change(output))
    try:
        return model(ids, **kwargs).logits
    finally:
        handle.remove()


def test_auto_classes_resolve(model_type):
    architecture = _architecture(model_type)
    config = _config(model_type)
    assert type(config) is architecture.config_class
    for auto_name, model_class in architecture.model_classes.items():
        import transformers

        assert type(getattr(transformers, auto_name).from_config(config)) is model_class


def test_forward_backward(model_type):
    model = _causal_lm(model_type).train()
    ids = _tokens(model.config)
    out = model(ids, labels=ids)
    assert out.logits.shape == (*ids.shape, model.config.vocab_size)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not missing, f"no finite gradient for {missing}"
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "mixer" in n)


def _backend_cases(model_type) -> list[tuple[str, str]]:
    """(operator, backend) for every non-reference backend available here of every operator the model runs."""
    operators = _architecture(model_type).config_class.operators
    return sorted(
        (op.name, backend) for op in operators for backend in op.available_backends() if backend != "reference"
    )


def test_every_backend_matches_reference(model_type):
    """Logits and all parameter gradients with each available backend of each operator (the other operators on
    `reference`) equal the reference recurrence (float32). A backend that refuses these inputs says why (warning)."""
    if not _architecture(model_type).config_class.operators:
        pytest.skip(f"{model_type} runs no sequence operator (its attention is torch's SDPA): no backends to compare")
    ids = _tokens(_config(model_type), length=7)

    def run(**choice):
        model = _causal_lm(model_type, kernel_backend="reference").train()
        with use_backend(**choice):
            loss = model(ids, labels=ids).loss
            loss.backward()
            return model(ids).logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    ref_logits, ref_grads = run()
    cases = _backend_cases(model_type)
    assert {backend for _, backend in cases} >= {"torch"}
    for operator, backend in cases:
        try:
            logits, grads = run(**{operator: backend})
        except BackendUnavailableError as refusal:
            warnings.warn(f"{model_type}: {refusal}", stacklevel=1)
            continue
        label = f"{operator}:{backend}"
        torch.testing.assert_close(
            logits, ref_logits, atol=2e-5, rtol=1e-4, msg=lambda m, label=label: f"{label} logits: {m}"
        )
        assert grads.keys() == ref_grads.keys()
        for name in grads:
            torch.testing.assert_close(
                grads[name],
                ref_grads[name],
                atol=2e-5,
                rtol=1e-4,
                msg=lambda m, label=label, name=name: f"{label} grad {name}: {m}",
            )


@torch.no_grad()
def test_prefill_then_decode_equals_full_forward(model_type):
    model = _causal_lm(model_type)
    ids = _tokens(model.config, length=10)
    full = model(ids, use_cache=False).logits
    cache = DynamicCache(config=model.config)
    prefill = model(ids[:, :6], cache=cache, use_cache=True)
    steps = [prefill.logits]
    for t in range(6, ids.shape[1]):
        steps.append(model(ids[:, t : t + 1], cache=prefill.cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_greedy_generate_equals_argmax_of_full_forward(model_type):
    model = _causal_lm(model_type)
    prompt = _tokens(model.config, length=5)
    generated = model.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert generated.shape == (2, 13)
    argmax = model(generated, use_cache=False).logits.argmax(-1)
    assert torch.equal(argmax[:, 4:-1], generated[:, 5:])


@torch.no_grad()
def _key_value_bytes(cache) -> int:
    """Bytes of the attention layers' keys and values."""
    return sum(
        t.numel() * t.element_size()
        for layer in cache.layers
        if not hasattr(layer, "recurrent_states") and getattr(layer, "is_initialized", False)
        for t in (layer.keys, layer.values)
    )


def test_cache_size_is_constant_in_generated_tokens(model_type):
    """The recurrent states keep their size however many tokens are generated; attention layers' keys and values
    (a hybrid's, or a depth-recurrent transformer's) grow by the same bytes per token."""
    model = _causal_lm(model_type)
    prompt = _tokens(model.config, length=4)
    states, keys_values, cached_tokens = [], [], []
    for new_tokens in (2, 12):
        out = model.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True
        )
        states.append(_cache_bytes(out.cache, model.config.ngram_layers))
        keys_values.append(_key_value_bytes(out.cache))
        cached_tokens.append(prompt.shape[1] + new_tokens - 1)  # the last token generated is never fed back
    assert states[0] == states[1]
    assert states[0] > 0 or keys_values[0] > 0, "the cache holds nothing"
    assert keys_values[1] * cached_tokens[0] == keys_values[0] * cached_tokens[1]


@torch.no_grad()
def test_beam_search_scores_match_full_forward(model_type):
    """Beam search reorders the recurrent cache; the best beam's score must equal its log-probability
    recomputed without a cache (wrong reordering makes them differ)."""
    model = _causal_lm(model_type)
    prompt = _tokens(model.config, batch=1, length=4)
    out = model.generate(
        prompt,
        num_beams=3,
        num_return_sequences=2,
        max_new_tokens=5,
        min_new_tokens=5,
        do_sample=False,
        length_penalty=0.0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    assert out.sequences.shape == (2, 9)
    logprobs = model(out.sequences, use_cache=False).logits.log_softmax(-1)
    chosen = logprobs[:, 3:-1].gather(-1, out.sequences[:, 4:, None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores, chosen, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_sampling_runs(model_type):
    model = _causal_lm(model_type)
    out = model.generate(_tokens(model.config, length=3), do_sample=True, top_k=5, max_new_tokens=4, min_new_tokens=4)
    assert out.shape == (2, 7) and int(out.max()) < model.config.vocab_size


@torch.no_grad()
def test_left_padding_matches_each_sequence_alone(model_type):
    model = _causal_lm(model_type)
    long, short = _tokens(model.config, batch=1, length=7, seed=3), _tokens(model.config, batch=1, length=4, seed=4)
    pad = torch.zeros(1, 3, dtype=torch.long)
    batch = torch.cat([long, torch.cat([pad, short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    logits = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(logits[0], model(long).logits[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1, 3:], model(short).logits[0], atol=1e-5, rtol=1e-4)
    generated = model.generate(batch, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    alone = model.generate(short, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(generated[1, -5:], alone[0, -5:])


PACKED_LENGTHS = (5, 1, 7)


def _packed_sequences(config) -> list[list[int]]:
    return [_tokens(config, batch=1, length=n, seed=10 + i)[0].tolist() for i, n in enumerate(PACKED_LENGTHS)]


@torch.no_grad()
def test_packed_sequences_equal_each_alone(model_type):
    """A padding-free batch as `DataCollatorWithFlattening` builds it (one row; position_ids restarting at 0, or
    seq_idx, or cu_seq_lens_q) gives every sequence the logits it gets alone."""
    model = _causal_lm(model_type)
    sequences = _packed_sequences(model.config)
    alone = torch.cat([model(torch.tensor([s])).logits for s in sequences], dim=1)
    batch = DataCollatorWithFlattening(return_seq_idx=True, return_flash_attn_kwargs=True)(
        [{"input_ids": s} for s in sequences]
    )
    for boundary in ("position_ids", "seq_idx", "cu_seq_lens_q"):
        logits = model(batch["input_ids"], **{boundary: batch[boundary]}).logits
        torch.testing.assert_close(
            logits, alone, atol=1e-5, rtol=1e-4, msg=lambda m, boundary=boundary: f"packed by {boundary}: {m}"
        )
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-4, msg=lambda m: f"the collator's whole batch: {m}")


def _left_padded(features: list[dict]) -> dict:
    """The padded batch of the same sequences: left padding, and no loss on each sequence's first token (as the
    flattening collator marks it), so both batches score the same tokens."""
    longest = max(len(f["input_ids"]) for f in features)
    ids, mask, labels = [], [], []
    for f in features:
        pad = longest - len(f["input_ids"])
        ids.append([0] * pad + f["input_ids"])
        mask.append([0] * pad + [1] * len(f["input_ids"]))
        labels.append([-100] * (pad + 1) + f["input_ids"][1:])
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


def test_trainer_on_flattened_batches_gives_the_padded_loss(model_type, tmp_path):
    """`Trainer` with `DataCollatorWithFlattening` (padding-free training) evaluates the same loss as the padded
    batch of the same sequences."""
    Dataset = pytest.importorskip(
        "datasets", reason="Trainer's evaluation data needs `datasets` (the train extra)"
    ).Dataset
    from transformers import Trainer, TrainingArguments

    model = _causal_lm(model_type)
    dataset = Dataset.from_dict({"input_ids": _packed_sequences(model.config)})
    losses = {}
    for name, collator in (("flattened", DataCollatorWithFlattening()), ("padded", _left_padded)):
        args = TrainingArguments(
            output_dir=str(tmp_path / name),
            per_device_eval_batch_size=len(PACKED_LENGTHS),
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        losses[name] = Trainer(model=model, args=args, data_collator=collator, eval_dataset=dataset).evaluate()[
            "eval_loss"
        ]
    assert abs(losses["flattened"] - losses["padded"]) <= 1e-5 * max(1.0, abs(losses["padded"])), losses


@torch.no_grad()
def test_save_and_load_round_trip(model_type, tmp_path):
    model = _causal_lm(model_type)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    auto_map = AutoConfig.from_pretrained(tmp_path).auto_map
    assert set(_architecture(model_type).model_classes) | {"AutoConfig"} <= set(auto_map), (
        "save_pretrained must write remote code"
    )
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    ids = _tokens(model.config)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    base = AutoModel.from_pretrained(tmp_path)
    assert torch.equal(base(ids).last_hidden_state, model.model(ids).last_hidden_state)


def test_sequence_classification_ignores_padding(model_type):
    from transformers import AutoModelForSequenceClassification

    if "AutoModelForSequenceClassification" not in _architecture(model_type).model_classes:
        pytest.skip(f"{model_type} registers no sequence-classification head")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(_config(model_type, num_labels=3)).eval()
    ids = _tokens(model.config, batch=1, length=5)
    pad = torch.zeros(1, 2, dtype=torch.long)
    left, right = torch.cat([pad, ids], 1), torch.cat([ids, pad], 1)
    mask_left = torch.cat([torch.zeros_like(pad), torch.ones_like(ids)], 1)
    mask_right = mask_left.flip(1)
    expected = model(ids).logits
    torch.testing.assert_close(model(left, attention_mask=mask_left).logits, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model(right, attention_mask=mask_right).logits, expected, atol=1e-5, rtol=1e-4)
    out = model(ids, labels=torch.tensor([2]))
    assert out.logits.shape == (1, 3) and torch.isfinite(out.loss)


def test_gradient_checkpointing_gives_same_gradients(model_type):
    ids = _tokens(_config(model_type))
    grads = []
    for checkpointing in (False, True):
        model = _causal_lm(model_type).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0])


def test_peft_lora_trains_and_merges(model_type):
    peft = pytest.importorskip("peft", reason="PEFT is in the `train` extra")
    model = _causal_lm(model_type)
    ids = _tokens(model.config)
    before = model(ids).logits.detach()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("mixer" in n for n in trainable), "LoRA must reach the mixer's projection layers"
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    lora.train()
    for _ in range(3):
        optimizer.zero_grad()
        lora(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    lora.eval()
    adapted = lora(input_ids=ids).logits.detach()
    assert not torch.allclose(adapted, before)
    merged = lora.merge_and_unload()
    torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=1e-4)


def test_trainer_loss_falls_on_a_learnable_pattern(model_type, tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is in the `train` extra")
    from transformers import Trainer, TrainingArguments

    model = _causal_lm(model_type).train()
    period = 5
    rows = [[(start + t) % period for t in range(16)] for start in range(period)] * 8
    dataset = datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        num_train_epochs=6,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0], losses


@torch.no_grad()
def test_bfloat16_runs_and_stays_close_to_float32(model_type):
    model = _causal_lm(model_type)
    ids = _tokens(model.config)
    expected = model(ids).logits
    model.to(torch.bfloat16)
    logits = model(ids).logits
    assert logits.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits: allow 5% of the logits' range
    torch.testing.assert_close(logits.float(), expected, atol=0.05 * expected.abs().max().item(), rtol=0.05)
    assert model.generate(ids[:, :3], max_new_tokens=3, min_new_tokens=3, do_sample=False).shape == (2, 6)


def test_invalid_config_raises_naming_the_field(model_type):
    model_type, variant = _split(model_type)
    base = {**_architecture(model_type).tiny_config, **variant}
    for field in ("hidden_size", "num_hidden_layers", "vocab_size"):
        with pytest.raises(ValueError, match=field):
            AutoConfig.for_model(model_type, **{**base, field: 0})
    with pytest.raises(ValueError, match="kernel_backend"):
        AutoConfig.for_model(model_type, **{**base, "kernel_backend": "no-such-backend"})
    with pytest.raises(ValueError, match="initializer_range must be a finite number >= 0"):
        AutoConfig.for_model(model_type, **{**base, "initializer_range": -0.1})


def test_bad_inputs_raise_clear_errors(model_type):
    model = _causal_lm(model_type)
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(_tokens(model.config), attention_mask=torch.ones(2, 1, 9, 9))
    ids = _tokens(model.config)
    with pytest.raises(ValueError, match=r"attention_mask must be \[2, 9\], got shape \[2, 12\]"):
        model(ids, attention_mask=torch.ones(2, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="no tokens"):
        model(ids[:, :0])
    cache = DynamicCache(config=model.config)
    model(ids, cache=cache, use_cache=True)
    with pytest.raises(ValueError, match="cache holds states of batch size 2, the input has batch size 1"):
        model(ids[:1, :1], cache=cache, use_cache=True)


@torch.no_grad()
def test_padded_positions_are_never_read(model_type):
    """NaN and inf in the embeddings of left-padded positions leave the real positions unchanged (a mixer must
    select, not multiply by the mask: NaN x 0 = NaN)."""
    model = _causal_lm(model_type)
    ids = _tokens(model.config, length=16) % 2  # repeated n-grams, so mixers that match tokens (n-gram heads) match
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    clean = model(ids, attention_mask=mask).logits

    def poison(embeds):
        embeds = embeds.clone()
        embeds[1, :2], embeds[1, 2:4] = float("nan"), float("inf")
        return embeds

    logits = _logits_with_embeddings(model, ids, poison, attention_mask=mask)
    assert torch.isfinite(logits[1, 4:]).all(), "non-finite padded inputs reached the real positions"
    torch.testing.assert_close(logits[:, 4:], clean[:, 4:], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_float64_model_computes_in_float64(model_type):
    """A model cast to float64 computes in float64 throughout: its logits respond linearly to a perturbation of
    the embeddings far below float32's resolution (any float32 step in between turns that into rounding noise)."""
    model = _causal_lm(model_type).double()
    ids = _tokens(model.config)
    embeds = model.get_input_embeddings()(ids)
    direction = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    step = 1e-9 * float(embeds.abs().max())

    def moved(by):
        return _logits_with_embeddings(model, ids, lambda embeds: embeds + by * step * direction)

    base = moved(0)
    assert base.dtype == torch.float64
    once, twice = moved(1) - base, moved(2) - base
    scale = float(once.abs().max())
    assert scale > 0, "the logits do not react to the embeddings at all"
    nonlinearity = float((twice - 2 * once).abs().max()) / scale
    assert nonlinearity < 1e-3, f"float64 logits respond to a 1e-9 perturbation with relative noise {nonlinearity:.2g}"
