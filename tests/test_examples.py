"""The README's main job (examples/quickstart.py) end to end at a few steps, and its export used as a
stranger would: `pipeline("text-generation")` in an interpreter that cannot import hf_seqplugins."""

import subprocess
import sys
import textwrap
from pathlib import Path

from hf_seqplugins.testing import run_without_package

ROOT = Path(__file__).resolve().parents[1]

PIPELINE = textwrap.dedent(
    """
    import importlib.util, sys
    assert importlib.util.find_spec("hf_seqplugins") is None
    from transformers import pipeline
    generator = pipeline("text-generation", model=sys.argv[1], trust_remote_code=True)
    print(repr(generator("The function ", max_new_tokens=40, do_sample=False)[0]["generated_text"]))
    """
)


def test_quickstart_trains_evaluates_generates_exports_and_reloads(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--max-steps",
            "4",
            "--block-size",
            "64",
            "--model-type",
            "seqp_gru",
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bits per byte" in result.stdout
    assert "reloaded with trust_remote_code: identical generations" in result.stdout
    model_dir = tmp_path / "model"
    expected = {
        "config.json",
        "model.safetensors",
        "README.md",
        "tokenizer.json",
        "tokenizer_config.json",
        "seqp_plugins_rnn_modeling.py",
    }
    assert expected <= {p.name for p in model_dir.iterdir()}
    assert "library_name: transformers" in (model_dir / "README.md").read_text()

    in_package = next(line for line in result.stdout.splitlines() if line.startswith("pipeline on the export: "))
    clean = run_without_package(PIPELINE, str(model_dir), work_dir=tmp_path / "clean")
    assert clean.strip().splitlines()[-1] == in_package.removeprefix("pipeline on the export: ")


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_drop_in_layer_example():
    out = run_example("drop_in_layer.py")
    assert "loaded torch.nn.LSTM weights: True" in out
    difference = float(out.split("max difference ")[1].split()[0])
    assert difference < 1e-5
    assert float(out.split("loss after 30 steps: ")[1].split()[0]) < 0.5


def test_lora_finetune_example(tmp_path):
    out = run_example("lora_finetune.py", "--max-steps", "10", "--output-dir", str(tmp_path))
    assert "trainable params" in out and "after:" in out
    assert (tmp_path / "model" / "model.safetensors").exists() and (tmp_path / "model" / "README.md").exists()


def test_evaluate_and_publish_example(tmp_path):
    out = run_example("evaluate_and_publish.py", "--max-steps", "3", "--output-dir", str(tmp_path))
    assert 0.0 <= float(out.split("DFA accuracy: ")[1].split()[0]) <= 1.0
    assert (tmp_path / "dfa_accuracy_vs_length.png").exists() and "config.json" in out and "(dry run)" in out
    assert "dfa_accuracy" in (tmp_path / "model" / "README.md").read_text()


def test_parallel_rnn_example(tmp_path):
    out = run_example("parallel_rnn.py", "--cell", "tanh", "--max-steps", "3", "--output-dir", str(tmp_path))
    assert float(out.split("max difference to the loop ")[1].split()[0]) < 1e-5
    assert "Newton iterations per solve" in out and "0 fallbacks" in out and "generated:" in out
