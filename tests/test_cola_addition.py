"""benchmarks/cola_addition.py runs end to end in its quick mode (its recorded results live in
benchmarks/results/cpu/cola/)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_quick_run_writes_the_search_of_every_sample(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cola_addition.py"), "--quick", "--output-dir", str(tmp_path)],
        check=True,
        timeout=300,
    )
    record = json.loads((tmp_path / "cola.json").read_text())
    settings, summary, samples = record["settings"], record["summary"], record["samples"]
    assert summary["samples"] == len(samples) == settings["samples"]
    assert summary["stock: generate disagrees with the check"] == 0
    assert all(1 <= sample["chains tried"] <= settings["budget"] for sample in samples)
    assert all(sample["best right"] or sample["right chains"] == 0 for sample in samples)
    assert "oracle" in (tmp_path / "cola.md").read_text()
