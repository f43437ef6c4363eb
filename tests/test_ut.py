"""Universal Transformer (`seqp_ut`), what the conformance suite does not check: the fixed-depth form is the shared
layer applied step by step with the timing signals; ACT equals a textbook per-position loop of tensor2tensor's
bookkeeping (halting sums end at exactly 1, weights sum to 1 where a position halted); a halting bias near +inf runs
one step; force_halt_at_max; the ponder loss in the returned loss, with or without padding; cached decoding where a
new token runs more steps than the cached ones; config errors. The encoder-decoder form: generate and beam search
against full forwards, source padding never read, the loss, Trainer learning to copy, export loading without the
package. The generic model checks run in `tests/test_conformance.py`."""

import math

import pytest
import torch

from hf_seqplugins.export import export
from hf_seqplugins.plugins.ut import (
    UniversalTransformerConfig,
    UniversalTransformerForCausalLM,
    UniversalTransformerForSeq2SeqLM,
)
from hf_seqplugins.plugins.ut.modeling import timing_signal
from hf_seqplugins.testing import run_without_package

SMALL = {
    "vocab_size": 32,
    "hidden_size": 16,
    "num_hidden_layers": 4,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "initializer_range": 0.3,
}


def model(seed: int = 0, **overrides) -> UniversalTransformerForCausalLM:
    torch.manual_seed(seed)
    return UniversalTransformerForCausalLM(UniversalTransformerConfig(**{**SMALL, **overrides})).eval().double()


def tokens(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, SMALL["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def signals(lm, length: int, step: int) -> torch.Tensor:
    """`[T, D]` position + step signals of step `step` for a row of `length` tokens."""
    width = lm.config.hidden_size
    position = timing_signal(torch.arange(length), width, torch.float64)
    return position + lm.model.recurrence.step_signal(step, position)


def test_timing_signal_is_tensor2tensors_sinusoid_with_concatenated_halves():
    signal = timing_signal(torch.tensor([0, 3]), 6, torch.float64)
    increments = math.log(1e4) / 2
    expected = [
        [math.sin(3 * math.exp(-j * increments)) for j in range(3)]
        + [math.cos(3 * math.exp(-j * increments)) for j in range(3)]
    ]
    torch.testing.assert_close(signal[1:], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(signal[0], torch.tensor([0.0, 0, 0, 1, 1, 1], dtype=torch.float64))
    assert timing_signal(torch.tensor([2]), 7, torch.float64)[0, -1] == 0  # odd width: zero-padded


@pytest.mark.parametrize("norm_style", ["pre", "post"])
@pytest.mark.parametrize("step_signal", ["learned", "sinusoid"])
def test_fixed_depth_is_the_shared_layer_applied_step_by_step(norm_style, step_signal):
    lm = model(recurrence_type="basic", norm_style=norm_style, step_timing_signal_type=step_signal)
    ids = tokens()
    with torch.no_grad():
        state = lm.model.embed_tokens(ids) * math.sqrt(lm.config.hidden_size)
        for step in range(lm.config.num_hidden_layers):
            state = lm.model.layer(state + signals(lm, ids.shape[1], step))
        expected = lm.lm_head(lm.model.norm(state))
        out = lm(ids)
    torch.testing.assert_close(out.logits, expected, rtol=1e-12, atol=1e-12)
    assert out.ponder_times.eq(lm.config.num_hidden_layers).all() and out.auxiliary_loss is None


def textbook_act(lm, ids):
    """tensor2tensor's ACT loop written per position with Python floats: returns outputs `[B, T, D]` (before the
    final norm), step counts N, remainders R, the summed halting probabilities and the summed update weights."""
    config = lm.config
    batch, length = ids.shape
    threshold, depth = 1 - config.act_epsilon, config.num_hidden_layers
    halting = [[0.0] * length for _ in range(batch)]
    remainders = [[0.0] * length for _ in range(batch)]
    updates = [[0] * length for _ in range(batch)]
    weights_sum = [[0.0] * length for _ in range(batch)]
    state = lm.model.embed_tokens(ids) * math.sqrt(lm.config.hidden_size)
    output = torch.zeros_like(state)
    for step in range(depth):
        if all(h >= threshold for row in halting for h in row):
            break
        x = state + signals(lm, length, step)
        probability = torch.sigmoid((x * lm.model.recurrence.halting_weight).sum(-1) + lm.model.recurrence.halting_bias)
        transformed = lm.model.layer(x)
        for b in range(batch):
            for t in range(length):
                p, weight = float(probability[b, t]), 0.0
                if halting[b][t] < 1.0:
                    if halting[b][t] + p > threshold or (config.act_force_halt_at_max and step == depth - 1):
                        remainders[b][t] = 1 - halting[b][t]
                        halting[b][t] = 1.0
                        weight = remainders[b][t]
                    else:
                        halting[b][t] += p
                        weight = p
                    updates[b][t] += 1
                weights_sum[b][t] += weight
                if config.act_type == "accumulated":
                    output[b, t] = transformed[b, t] * weight + output[b, t]
                else:
                    output[b, t] = transformed[b, t] * weight + output[b, t] * (1 - weight)
        state = transformed
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731
    return output, *(as_tensor(rows) for rows in (updates, remainders, halting, weights_sum))


@pytest.mark.parametrize(
    "overrides",
    [
        {"act_halting_bias_init": 2.0},
        {"act_halting_bias_init": 2.0, "act_type": "accumulated"},
        {"act_halting_bias_init": 2.0, "act_force_halt_at_max": True},
    ],
    ids=["basic", "accumulated", "force_halt"],
)
@torch.no_grad()
def test_act_equals_the_textbook_loop(overrides):
    lm = model(**overrides)
    ids = tokens(length=9)
    output, updates, remainders, halting, weights_sum = textbook_act(lm, ids)
    out = lm(ids, output_hidden_states=True, use_cache=False)
    torch.testing.assert_close(out.hidden_states[-1], lm.model.norm(output), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.ponder_times, updates)
    torch.testing.assert_close(out.remainders, remainders, rtol=1e-12, atol=1e-12)
    assert len(set(updates.flatten().tolist())) > 1, "every position ran as many steps: the case proves little"
    halted = remainders > 0
    assert halted.any()
    torch.testing.assert_close(halting[halted], torch.ones_like(halting[halted]), rtol=0, atol=1e-15)
    torch.testing.assert_close(weights_sum[halted], torch.ones_like(weights_sum[halted]), rtol=0, atol=1e-12)
    if overrides.get("act_force_halt_at_max"):
        assert halted.all()
    expected_loss = lm.config.act_loss_weight * (updates + remainders).mean()
    torch.testing.assert_close(out.auxiliary_loss, expected_loss)


@torch.no_grad()
def test_halting_bias_near_infinity_runs_one_step_with_weight_one():
    lm = model(act_halting_bias_init=50.0)
    ids = tokens()
    out = lm(ids, output_hidden_states=True, use_cache=False)
    embedded = lm.model.embed_tokens(ids) * math.sqrt(lm.config.hidden_size)
    expected = lm.model.layer(embedded + signals(lm, ids.shape[1], 0))
    assert out.ponder_times.eq(1).all()
    torch.testing.assert_close(out.remainders, torch.ones_like(out.remainders))
    torch.testing.assert_close(out.hidden_states[-1], lm.model.norm(expected), rtol=1e-12, atol=1e-12)
    assert len(out.hidden_states) == 2  # without a cache the loop stopped after one step: the input and the output
    assert len(lm(ids, output_hidden_states=True).hidden_states) == 1 + lm.config.num_hidden_layers  # with one


def test_the_ponder_loss_is_part_of_the_returned_loss():
    lm = model(act_halting_bias_init=-1.0, act_loss_weight=0.5)
    ids = tokens()
    out = lm(ids, labels=ids)
    language_model_loss = lm.loss_function(logits=out.logits, labels=ids, vocab_size=lm.config.vocab_size)
    torch.testing.assert_close(out.loss, language_model_loss + out.auxiliary_loss)
    assert out.auxiliary_loss > 0
    out.loss.backward()
    assert lm.model.recurrence.halting_bias.grad.abs() > 0  # the ponder loss reaches the halting unit through R


@pytest.mark.parametrize("ignores_padding", [True, False])
@torch.no_grad()
def test_ponder_loss_over_real_tokens_or_all_positions(ignores_padding):
    lm = model(act_halting_bias_init=-1.0, act_loss_ignores_padding=ignores_padding)
    ids = tokens(batch=1)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    alone, with_padding = lm(ids), lm(padded, attention_mask=mask)
    assert with_padding.ponder_times[0, :3].eq(0).all()  # padding never runs a step
    torch.testing.assert_close(with_padding.ponder_times[:, 3:], alone.ponder_times)
    real_positions = ids.shape[1] / padded.shape[1]
    ratio = 1.0 if ignores_padding else real_positions
    torch.testing.assert_close(with_padding.auxiliary_loss, alone.auxiliary_loss * ratio)


@torch.no_grad()
def test_cached_decoding_when_a_new_token_runs_more_steps_than_the_cached_ones():
    """The prompt's tokens halt after one step; the next token (one whose embedding turns the halting unit off)
    runs all four: it attends to the prompt's states at steps the prompt's own outputs never needed."""
    lm = model()
    depth = lm.config.num_hidden_layers
    lm.model.recurrence.halting_weight.zero_()
    lm.model.recurrence.halting_weight[0] = 1.0
    lm.model.recurrence.halting_bias.fill_(0.0)
    embeddings = lm.model.embed_tokens.weight
    embeddings[:, 0] = 50.0  # scaled by sqrt(D): a halting logit of about +200 at every step, one step
    slow = 5
    embeddings[slow, 0] = -1e4  # never halts
    lm.model.recurrence.step_table.zero_()
    lm.config.add_position_timing_signal = False  # keep channel 0 free of position signals
    prompt = torch.tensor([[1, 2, 3, 4]])
    ids = torch.cat([prompt, torch.tensor([[slow]])], dim=1)
    full = lm(ids)
    assert full.ponder_times[0, :4].eq(1).all() and full.ponder_times[0, 4] == depth
    prefill = lm(prompt, use_cache=True)
    assert prefill.ponder_times.eq(1).all()
    decoded = lm(ids[:, 4:], cache=prefill.cache, use_cache=True)
    torch.testing.assert_close(decoded.logits[:, -1], full.logits[:, -1], rtol=1e-12, atol=1e-12)
    assert [decoded.cache.get_seq_length(step) for step in range(depth)] == [5] * depth


@pytest.mark.parametrize(
    "change, message",
    [
        ({"act_epsilon": 0.0}, "act_epsilon must be in"),
        ({"act_epsilon": 1.0}, "act_epsilon must be in"),
        ({"recurrence_type": "global"}, "recurrence_type must be one of"),
        ({"act_type": "global"}, "act_type must be one of"),
        ({"norm_style": "sandwich"}, "norm_style must be one of"),
        ({"step_timing_signal_type": "rope"}, "step_timing_signal_type must be one of"),
        ({"act_loss_weight": -1.0}, "act_loss_weight must be >= 0"),
        ({"act_halting_bias_init": float("nan")}, "act_halting_bias_init must be a finite number"),
        ({"act_force_halt_at_max": 1}, "act_force_halt_at_max must be True or False"),
        ({"hidden_size": 15}, "divisible by num_attention_heads"),
        ({"kernel_backend": "torch"}, "kernel_backend must be 'auto'"),
    ],
)
def test_bad_config_is_named(change, message):
    with pytest.raises(ValueError, match=message):
        UniversalTransformerConfig(**{**SMALL, **change})


def seq2seq(seed: int = 0, **overrides) -> UniversalTransformerForSeq2SeqLM:
    torch.manual_seed(seed)
    config = UniversalTransformerConfig(**{**SMALL, "pad_token_id": 0, **overrides})
    return UniversalTransformerForSeq2SeqLM(config).eval()


def padded_source() -> tuple[torch.Tensor, torch.Tensor]:
    """`[2, 6]` source ids and their mask, the second row right-padded after 4 tokens."""
    source = tokens(batch=2, length=6, seed=3).clamp_min(1)
    mask = torch.ones_like(source)
    mask[1, 4:] = 0
    return source.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("overrides", [{}, {"recurrence_type": "basic"}, {"norm_style": "post"}])
@torch.no_grad()
def test_seq2seq_generate_equals_the_argmax_of_full_forwards(overrides):
    """Greedy decoding with the per-step cache against decoder forwards over the whole prefix without one, with a
    padded source row; beam search's best score against its sequence's log-probability without a cache."""
    model = seq2seq(**overrides)
    source, mask = padded_source()
    out = model.generate(
        source,
        attention_mask=mask,
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
    )
    decoded = torch.full((2, 1), model.config.decoder_start_token_id)
    for step in range(6):
        logits = model(source, attention_mask=mask, decoder_input_ids=decoded, use_cache=False).logits[:, -1]
        torch.testing.assert_close(out.scores[step], logits, rtol=1e-5, atol=1e-5)  # the cached step's logits
        decoded = torch.cat([decoded, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, decoded)
    beams = model.generate(
        source[:1],
        attention_mask=mask[:1],
        num_beams=3,
        max_new_tokens=4,
        min_new_tokens=4,
        do_sample=False,
        length_penalty=0.0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    best = beams.sequences[:1]
    logprobs = model(source[:1], attention_mask=mask[:1], decoder_input_ids=best, use_cache=False).logits
    logprobs = logprobs.log_softmax(-1)[0, :-1].gather(-1, best[0, 1:, None]).sum()
    torch.testing.assert_close(beams.sequences_scores[0], logprobs, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_seq2seq_encoder_never_reads_the_source_padding():
    model = seq2seq()
    source, mask = padded_source()
    decoder_inputs = tokens(batch=1, length=3, seed=4)
    alone = model(source[1:, :4], decoder_input_ids=decoder_inputs, use_cache=False)
    noisy = source[1:].clone()
    noisy[0, 4:] = 7  # anything at the padded positions
    padded = model(noisy, attention_mask=mask[1:], decoder_input_ids=decoder_inputs, use_cache=False)
    torch.testing.assert_close(padded.logits, alone.logits, rtol=1e-5, atol=1e-6)
    assert padded.encoder_ponder_times[0, 4:].eq(0).all()
    torch.testing.assert_close(padded.auxiliary_loss, alone.auxiliary_loss)


def test_seq2seq_loss_is_the_cross_entropy_plus_both_ponder_losses():
    model = seq2seq(act_halting_bias_init=-1.0, act_loss_weight=0.5)
    source, mask = padded_source()
    labels = tokens(batch=2, length=4, seed=5)
    labels[1, 3] = -100
    out = model(source, attention_mask=mask, labels=labels)
    decoder_inputs = model.shift_right(labels)
    assert decoder_inputs[:, 0].eq(model.config.decoder_start_token_id).all() and (decoder_inputs >= 0).all()
    cross_entropy = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    encoder_ponder = 0.5 * (out.encoder_ponder_times + out.encoder_remainders)[mask.bool()].mean()
    decoder_ponder = 0.5 * (out.ponder_times + out.remainders).mean()
    torch.testing.assert_close(out.loss, cross_entropy + encoder_ponder + decoder_ponder)
    out.loss.backward()
    assert model.encoder.recurrence.halting_bias.grad.abs() > 0
    assert model.decoder_recurrence.halting_bias.grad.abs() > 0


def test_seq2seq_trainer_learns_to_copy(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_seqplugins.app.tasks import copy

    rows = copy(num_examples=64, length=4, num_symbols=4, seq2seq=True, seed=0)
    model = seq2seq(vocab_size=5, num_hidden_layers=2, hidden_size=32, intermediate_size=64, initializer_range=0.02)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=200,
        per_device_train_batch_size=64,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(model=model.train(), args=args, train_dataset=rows)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.7, losses  # half of chance (ln 4 = 1.39); the ponder loss adds about 0.04


def test_seq2seq_export_loads_and_generates_without_the_package(tmp_path):
    model = seq2seq(initializer_range=0.3)
    folder = export(model, tmp_path / "export")
    source, mask = padded_source()
    torch.save({"source": source, "mask": mask}, folder / "inputs.pt")
    loader = (
        "import importlib.util, sys, torch\n"
        "assert importlib.util.find_spec('hf_seqplugins') is None\n"
        "from transformers import AutoModelForSeq2SeqLM\n"
        "folder = sys.argv[1]\n"
        "inputs = torch.load(folder + '/inputs.pt')\n"
        "model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()\n"
        "source, mask = inputs['source'], inputs['mask']\n"
        "generated = model.generate(source, attention_mask=mask, max_new_tokens=5, do_sample=False)\n"
        "torch.save(generated, folder + '/generated.pt')\n"
    )
    run_without_package(loader, str(folder), work_dir=tmp_path / "cwd")
    with torch.no_grad():
        expected = model.generate(source, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(torch.load(folder / "generated.pt"), expected)


def test_ponder_times_plot_per_position(tmp_path):
    from hf_seqplugins.app.plots import ponder_times

    lm = model(act_halting_bias_init=2.0)
    with torch.no_grad():
        steps = lm(tokens(batch=1, length=9), use_cache=False).ponder_times[0].tolist()
    path = ponder_times(steps, tmp_path / "ponder.png", tokens=[str(i) for i in range(9)])
    assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="tokens has 2 labels for 9 positions"):
        ponder_times(steps, tmp_path / "bad.png", tokens=["a", "b"])
