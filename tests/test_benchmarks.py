"""The benchmark harness runs end to end (its recorded results live in benchmarks/results/)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_harness_quick_run_writes_both_tables(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "harness.py"), "--quick", "--output-dir", str(tmp_path)],
        check=True,
        timeout=900,
    )
    operators = json.loads((tmp_path / "operators.json").read_text())
    assert {row["operator"] for row in operators} >= {"headwise_rnn (lstm)", "headwise_rnn (gru)"}
    assert all(row["fwd_ms"] > 0 and row["saved_for_backward_mib"] > 0 for row in operators)
    models = {row["model"] for row in json.loads((tmp_path / "bench.json").read_text())}
    assert "llama (attention)" in models and "seqp_lstm" in models
