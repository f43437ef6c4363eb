"""The train and evaluate workflows on a sequence-classification task (ListOps)."""

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from hf_seqplugins.app import tasks, workflows
from hf_seqplugins.testing import tiny_config


def test_s4d_classifier_learns_easy_listops(tmp_path):
    data = tasks.splits("listops", num_train=512, num_test=128, length=64, max_depth=1, max_args=3)
    model, trainer = workflows.train(
        "seqp_s4d",
        data,
        None,
        tmp_path,
        max_steps=60,
        batch_size=16,
        learning_rate=1e-2,
        overrides={"hidden_size": 16, "num_hidden_layers": 2, "intermediate_size": 0},
    )
    assert type(model).__name__ == "S4DForSequenceClassification" and workflows.is_classifier(model)
    assert (
        model.config.num_labels == 10
        and model.config.pad_token_id == tasks.LISTOPS_PAD
        and model.config.vocab_size == 16
    )
    ssm_lr = model.config.ssm_lr
    assert any(group.get("initial_lr") == ssm_lr for group in trainer.optimizer.param_groups), (
        "SSM parameters keep their own learning rate"
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    results = workflows.evaluate(model, data["test"])
    assert set(results) == {"loss", "accuracy"} and results["accuracy"] > 0.2, results
    assert trainer.evaluate()["eval_accuracy"] == pytest.approx(results["accuracy"])


def test_evaluate_refuses_a_model_of_the_other_kind():
    causal_lm = AutoModelForCausalLM.from_config(tiny_config("seqp_s4d", vocab_size=16))
    with pytest.raises(ValueError, match="a causal LM, on classification rows"):
        workflows.evaluate(causal_lm, tasks.listops(num_examples=2, length=16))


def test_model_type_without_a_classifier_is_named():
    with pytest.raises(ValueError, match="model type 'vit' has no sequence classifier"):
        workflows.sequence_classifier(AutoConfig.for_model("vit"))


def test_evaluate_lengths_names_task_arguments_it_cannot_take():
    model = AutoModelForCausalLM.from_config(tiny_config("seqp_s4d", vocab_size=16))
    with pytest.raises(ValueError, match=r"\['length', 'num_train'\] do not apply"):
        workflows.evaluate_lengths(model, "listops", [16], num_train=4, length=8)
