"""The `hf-seqplugins` command line."""

import dataclasses
import json
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from hf_seqplugins.app.cli import main
from hf_seqplugins.core.backends import OPERATORS
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


def test_export_and_push_keep_the_saved_tokenizer(tmp_path, capsys):
    from hf_seqplugins.app.data import byte_tokenizer

    folder = saved_model(tmp_path)
    byte_tokenizer().save_pretrained(folder)
    assert main(["export", str(folder), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tokenizer_config.json").exists()
    assert main(["push", str(folder), "someone/tiny", "--dry-run"]) == 0
    assert "tokenizer_config.json" in capsys.readouterr().out


def test_push_dry_run_lists_files_and_uploads_nothing(tmp_path, capsys):
    assert main(["push", str(saved_model(tmp_path)), "someone/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "dry run: nothing uploaded" in out


def test_push_error_is_a_message_and_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert main(["push", str(saved_model(tmp_path)), "someone/tiny", "--message", "x"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


SMALL = ["--config", "hidden_size=16", "num_hidden_layers=1", "intermediate_size=0", "--batch-size", "8"]


def test_train_on_a_probe_with_lora_then_resume_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model-type",
                "seqp_gru",
                "--task",
                "modular_counting",
                "--max-steps",
                "4",
                "--lora",
                "--output-dir",
                str(out),
                *SMALL,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "accuracy on labelled tokens" in printed and "exported to" in printed
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "model" / "results.json").read_text())
    assert 0.0 <= results["accuracy"] <= 1.0 and results["loss"] > 0
    card = ModelCard.load(out / "model" / "README.md").data.to_dict()
    scored = {metric["type"] for result in card["model-index"][0]["results"] for metric in result["metrics"]}
    assert {"accuracy", "sequence_accuracy", "loss"} <= scored
    assert list((out / "checkpoints").glob("checkpoint-*")), "Trainer checkpoints are kept for --resume"
    assert (
        main(
            [
                "train",
                "--model-type",
                "seqp_gru",
                "--task",
                "modular_counting",
                "--max-steps",
                "6",
                "--lora",
                "--resume",
                "--output-dir",
                str(out),
                *SMALL,
            ]
        )
        == 0
    )
    assert (out / "checkpoints" / "checkpoint-6").exists()
    assert (
        main(["evaluate", str(out / "model"), "--task", "modular_counting", "--output-dir", str(tmp_path / "eval")])
        == 0
    )
    assert '"sequence_accuracy"' in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "eval_modular_counting.json").read_text())[0]["accuracy"] >= 0


def test_evaluate_across_lengths_writes_json_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--task", "regbench", "--max-steps", "2", "--output-dir", str(out), *SMALL]) == 0
    assert "DFA accuracy" in capsys.readouterr().out
    assert (
        main(
            [
                "evaluate",
                str(out / "model"),
                "--task",
                "regbench",
                "--lengths",
                "16",
                "48",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "eval_regbench.json").read_text())
    assert [row["length"] for row in rows] == [16, 48] and all(0 <= row["dfa_accuracy"] <= 1 for row in rows)
    assert "| length |" in (tmp_path / "eval_regbench.md").read_text()
    assert (tmp_path / "eval_regbench.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no length to vary"):
        main(["evaluate", str(out / "model"), "--task", "mqar", "--lengths", "16", "--output-dir", str(tmp_path)])


def test_train_on_text_files_then_generate(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("abcabcabc hello world. " * 200)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--text-files",
                str(text),
                "--max-steps",
                "3",
                "--block-size",
                "32",
                "--output-dir",
                str(out),
                *SMALL,
            ]
        )
        == 0
    )
    assert "bits per byte" in capsys.readouterr().out
    assert (out / "model" / "tokenizer_config.json").exists()
    assert main(["generate", str(out / "model"), "--prompt", "abc", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("abc")
    other = tmp_path / "other.txt"
    other.write_text("hello world. " * 40)
    evaluation = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(out / "model"),
                "--text-files",
                str(other),
                "--block-size",
                "32",
                "--output-dir",
                str(evaluation),
            ]
        )
        == 0
    )
    scores = json.loads((evaluation / "eval_other.json").read_text())
    assert scores[0]["bits_per_byte"] > 0 and "written:" in capsys.readouterr().out


def test_unknown_task_and_bad_override_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        main(["train", "--task", "nope", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="key=value"):
        main(["train", "--task", "mqar", "--config", "hidden_size", "--output-dir", str(tmp_path)])


def test_demo_trains_exports_and_reloads(tmp_path, capsys):
    assert main(["demo", "--max-steps", "3", "--block-size", "32", "--output-dir", str(tmp_path), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "bits per byte" in printed and "reloaded with trust_remote_code: identical generations" in printed
    assert {"README.md", "results.json", "tokenizer_config.json", "model.safetensors"} <= {
        p.name for p in (tmp_path / "model").iterdir()
    }
    results = json.loads((tmp_path / "model" / "results.json").read_text())
    assert "bits_per_byte" in results and "sequence_accuracy" not in results  # meaningless for blocks of text
    card = (tmp_path / "model" / "README.md").read_text()
    assert "<your-name>" not in card and "sequence_accuracy" not in card


def test_bench_compares_backends_with_the_attention_baseline(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--model-types",
                "seqp_gru",
                "--backends",
                "torch",
                "reference",
                "--lengths",
                "8",
                "16",
                "--batch-size",
                "1",
                "--config",
                "hidden_size=16",
                "num_hidden_layers=1",
                "intermediate_size=32",
                "--repeats",
                "1",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["model"], r["backend"], r["length"]) for r in rows] == [
        ("llama (attention)", "sdpa", 8),
        ("llama (attention)", "sdpa", 16),
        ("seqp_gru", "torch", 8),
        ("seqp_gru", "torch", 16),
        ("seqp_gru", "reference", 8),
        ("seqp_gru", "reference", 16),
    ]
    gru = [r for r in rows if r["model"] == "seqp_gru"]
    assert len({r["cache_bytes"] for r in gru}) == 1, "a recurrent cache does not grow with the context"
    assert rows[1]["cache_bytes"] == 2 * rows[0]["cache_bytes"], "the attention KV cache grows linearly"
    assert all(r["train_tokens_per_s"] > 0 and r["decode_ms_per_token"] > 0 for r in rows)
    assert "GFLOP/s" in (tmp_path / "bench.md").read_text()
    assert all(
        (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
        for name in ("decode_latency.png", "decode_cache.png", "train_throughput.png")
    )


LISTOPS = ["--task", "listops", "--task-args", "length=64", "max_depth=1", "max_args=3", "num_train=128", "num_test=32"]


def test_listops_classifier_demo_evaluate_and_refused_generation(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["demo", "--model-type", "seqp_s4d", *LISTOPS, "--max-steps", "8", "--output-dir", str(out), *SMALL]) == 0
    )
    printed = capsys.readouterr().out
    assert "held-out: loss" in printed and "reloaded with trust_remote_code: identical logits" in printed
    results = json.loads((out / "model" / "results.json").read_text())
    assert set(results) == {"loss", "accuracy"} and 0 <= results["accuracy"] <= 1
    assert json.loads((out / "model" / "config.json").read_text())["architectures"] == ["S4DForSequenceClassification"]
    assert main(["evaluate", str(out / "model"), *LISTOPS, "--output-dir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "eval_listops.json").read_text())[0]["accuracy"] == pytest.approx(results["accuracy"])
    assert (
        main(
            [
                "evaluate",
                str(out / "model"),
                "--task",
                "listops",
                "--task-args",
                "max_depth=2",
                "--lengths",
                "16",
                "32",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert [row["length"] for row in json.loads((tmp_path / "eval_listops.json").read_text())] == [16, 32]
    assert (tmp_path / "eval_listops.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["generate", str(out / "model"), "--prompt", "[MAX 1 2 ]"]) == 1
    assert "sequence classifier (S4DForSequenceClassification)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a sequence classifier, on language-modelling rows"):
        main(["evaluate", str(out / "model"), "--task", "mqar", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="task arguments"):
        main(["train", "--task-args", "length=64", "--output-dir", str(tmp_path)])


def test_check_runs_both_kits_on_an_architecture(capsys):
    """The third-party example plugin: every operator backend and every model check passes."""
    assert main(["check", "seqp_mingru"]) == 0
    out = capsys.readouterr().out
    assert "mingru_scan:torch" in out and "packed_sequences_equal_each_alone" in out
    assert "FAIL" not in out and out.rstrip().endswith("all checks pass")


def test_check_fails_with_the_reason_of_a_broken_backend(capsys, monkeypatch):
    from seqp_mingru import configuration, scan

    def forgets_the_initial_state(gate, candidate, initial_state, mask):
        return scan.parallel(gate, candidate, torch.zeros_like(initial_state), mask)

    broken = dataclasses.replace(
        scan.MINGRU_SCAN,
        name="broken_mingru_scan",
        backends={**scan.MINGRU_SCAN.backends, "torch": lambda: forgets_the_initial_state},
    )
    monkeypatch.setattr(configuration.MinGRUConfig, "operators", (broken,))
    assert main(["check", "seqp_mingru", "--operators-only"]) == 1
    out = capsys.readouterr().out
    assert "broken_mingru_scan:torch" in out and "FAIL" in out and "relative error" in out
    assert main(["check", "seqp_nonexistent"]) == 2
    OPERATORS.pop(broken.name)


def test_console_answers_mistakes_with_one_line(tmp_path, capsys, monkeypatch):
    """The installed command turns a user's mistake into one `error:` line naming what to do, exit status 2."""
    from hf_seqplugins.app.cli import console

    folder = saved_model(tmp_path)
    capsys.readouterr()
    cases = [
        (["train", "--config", "hidden_sizee=64"], "no config field 'hidden_sizee'; did you mean 'hidden_size'?"),
        (["train", "--config", "hidden_size=abc"], "hidden_size must be an integer"),
        (["train", "--text-files", str(tmp_path / "missing.txt")], "No such file"),
        (["train", "--task", "mqar", "--task-args", "bogus=1"], "takes no argument ['bogus']; it takes"),
        (["evaluate", str(tmp_path / "nowhere"), "--task", "pydoc"], "not found"),
        (["generate", str(folder), "--prompt", "é€"], "outside the model's vocabulary"),
    ]
    for argv, message in cases:
        monkeypatch.setattr(
            sys, "argv", ["hf-seqplugins", *argv, *(["--output-dir", str(tmp_path)] if argv[0] == "train" else [])]
        )
        assert console() == 2, argv
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # after any progress bars of loading
        assert last.startswith("error: ") and message in last and "Traceback" not in err, (argv, err)


def test_help_shows_defaults_and_list_fits_a_terminal(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "(default: 300)" in capsys.readouterr().out
    assert main(["list"]) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines() if line.startswith("    ")) <= 100


def test_check_without_the_triton_interpreter_reruns_itself_with_it(capfd, monkeypatch):
    """Triton is imported before `check` runs, too late to choose its interpreter: on a machine without CUDA the
    check runs in a fresh interpreter that has chosen it (the Triton backends would crash otherwise)."""
    from hf_seqplugins.app import check

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check.run(["seqp_mingru"], operators_only=True) == 0
    assert "mingru_scan:torch" in capfd.readouterr().out
