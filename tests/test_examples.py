"""The README's main job (examples/quickstart.py) end to end, at a few training steps."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_trains_evaluates_generates_saves_and_reloads(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--max-steps", "4", "--block-size", "64",
         "--model-type", "seqp_gru", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bits per byte" in result.stdout
    assert "reloaded with trust_remote_code: identical generations" in result.stdout
    model_dir = tmp_path / "model"
    assert {"config.json", "model.safetensors", "README.md", "seqp_plugins_rnn_modeling.py"} <= {p.name for p in model_dir.iterdir()}
    assert "library_name: transformers" in (model_dir / "README.md").read_text()
