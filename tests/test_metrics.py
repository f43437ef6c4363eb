"""The shipped `evaluate` metric modules, loaded offline by path."""

import math

import pytest
import torch

from hf_seqplugins.app import metrics


def test_available_lists_the_shipped_modules():
    assert {"bits_per_byte", "recall_accuracy", "classification_accuracy"} <= set(metrics.available())


def test_bits_per_byte():
    metric = metrics.load("bits_per_byte")
    result = metric.compute(nll=[math.log(2) * 3, math.log(2) * 5], num_bytes=[2, 6])
    assert result["bits_per_byte"] == pytest.approx(1.0)
    assert result["perplexity"] == pytest.approx(2.0)


def test_recall_accuracy_scores_only_queried_positions():
    metric = metrics.load("recall_accuracy")
    result = metric.compute(predictions=[[5, 1, 2], [7, 3, 9]], references=[[-100, 1, 2], [-100, 3, 4]])
    assert result == {"accuracy": pytest.approx(0.75), "sequence_accuracy": pytest.approx(0.5)}
    with pytest.raises(ValueError, match="no scored positions"):
        metric.compute(predictions=[[1]], references=[[-100]])


def test_unknown_metric_names_the_shipped_ones():
    with pytest.raises(ValueError, match="bits_per_byte"):
        metrics.load("accuracy")


def test_trainer_reports_accuracy_through_the_metric_module(tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from hf_seqplugins.app.tasks import modular_counting
    from hf_seqplugins.testing import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("seqp_lstm", vocab_size=8))
    data = modular_counting(num_examples=16, length=6)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True)
    scores = Trainer(model=model, args=args, eval_dataset=data, **metrics.trainer_metrics()).evaluate()
    argmax = model(torch.tensor(data["input_ids"])).logits.argmax(-1)[:, -2]
    expected = (argmax == torch.tensor(data["input_ids"])[:, -1]).float().mean().item()
    assert scores["eval_accuracy"] == pytest.approx(expected) and scores["eval_sequence_accuracy"] == pytest.approx(
        expected
    )


def test_dfa_accuracy_scores_valid_continuations():
    from hf_seqplugins.app.tasks import regbench

    metric = metrics.load("dfa_accuracy")
    data = regbench(num_examples=4, length=96)
    gold = [row[1:] + [0] for row in data["input_ids"]]
    assert metric.compute(predictions=gold, references=data["input_ids"], dfa=data["dfa"]) == {"dfa_accuracy": 1.0}
    # DFA a -> b -> a (separator 18, padding 19); predicting b is valid after "a", invalid after "a b" and after "|"
    dfa, tokens = [[0, 0, 1], [1, 1, 0]], [0, 1, 0, 18, 0, 19, 19]
    result = metric.compute(predictions=[[1, 1, 9, 1, 9, 9, 9]], references=[tokens], dfa=[dfa])
    assert result["dfa_accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="not a transition"):
        metric.compute(predictions=[[0, 0, 0]], references=[[0, 0, 0]], dfa=[dfa])


def test_trainer_reports_dfa_accuracy_on_regbench(tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from hf_seqplugins.app.tasks import regbench
    from hf_seqplugins.testing import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("seqp_gru", vocab_size=20))
    data = regbench(num_examples=6, length=40)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True)
    scores = Trainer(model=model, args=args, eval_dataset=data, **metrics.trainer_metrics(data)).evaluate()
    predictions = model(torch.tensor(data["input_ids"])).logits.argmax(-1).tolist()
    expected = metrics.load("dfa_accuracy").compute(
        predictions=predictions, references=data["input_ids"], dfa=data["dfa"]
    )
    assert scores["eval_dfa_accuracy"] == pytest.approx(expected["dfa_accuracy"])


def test_classification_accuracy():
    metric = metrics.load("classification_accuracy")
    assert metric.compute(predictions=[3, 1, 4, 1], references=[3, 1, 5, 9]) == {"accuracy": pytest.approx(0.5)}
    with pytest.raises(ValueError, match="no examples"):
        metric.compute(predictions=[], references=[])


def test_trainer_reports_classification_accuracy(tmp_path):
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from hf_seqplugins.app.tasks import LISTOPS_PAD, listops
    from hf_seqplugins.testing import tiny_config

    config = tiny_config("seqp_s4d", vocab_size=16, num_labels=10, pad_token_id=LISTOPS_PAD)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    data = listops(num_examples=10, length=24, max_depth=2, max_args=3)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True)
    scores = Trainer(model=model, args=args, eval_dataset=data, **metrics.trainer_metrics(data)).evaluate()
    with torch.no_grad():
        logits = model(torch.tensor(data["input_ids"]), attention_mask=torch.tensor(data["attention_mask"])).logits
    expected = (logits.argmax(-1) == torch.tensor(data["labels"])).float().mean().item()
    assert scores["eval_accuracy"] == pytest.approx(expected) and "eval_sequence_accuracy" not in scores
