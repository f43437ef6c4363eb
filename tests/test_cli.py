"""The `hf-seqplugins` command line."""
import json

from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from hf_seqplugins.cli import main
from hf_seqplugins.testing import tiny_config


def saved_model(tmp_path):
    model = AutoModelForCausalLM.from_config(tiny_config("seqp_lstm"))
    model.save_pretrained(tmp_path / "saved")
    return tmp_path / "saved"


def test_list_shows_architectures_and_backends(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "seqp_slstm" in out and "headwise_rnn: reference, torch" in out and "hf-seqplugins" in out


def test_export_writes_card_with_results(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"dataset": "toy", "metric": "accuracy", "value": 0.5}]))
    assert main(["export", str(saved_model(tmp_path)), str(tmp_path / "out"), "--results", str(results)]) == 0
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.5
    assert (tmp_path / "out" / "seqp_plugins_rnn_modeling.py").exists()


def test_push_dry_run_lists_files_and_uploads_nothing(tmp_path, capsys):
    assert main(["push", str(saved_model(tmp_path)), "someone/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "dry run: nothing uploaded" in out


def test_push_error_is_a_message_and_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert main(["push", str(saved_model(tmp_path)), "someone/tiny", "--message", "x"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
