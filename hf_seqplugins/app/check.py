"""`hf-seqplugins check [MODEL_TYPE ...]`: both conformance kits over installed architectures, as tables.

The operator kit (`hf_seqplugins.testing.operators`) runs on every operator the architectures declare
(`config_class.operators`), every backend that can run here; the model suite
(`hf_seqplugins.testing.conformance`, run by pytest) on each architecture's tiny config. Each table has one
row per operator backend or architecture and one column per check: "pass", "n/a" (cannot run here or refuses
these inputs; the reasons are listed) or "FAIL" (the reasons are listed). The exit status is 1 when anything
fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

FAIL, NOT_APPLICABLE, PASS = "FAIL", "n/a", "pass"
_STATUS = {"fail": FAIL, "n/a": NOT_APPLICABLE, "pass": PASS}  # the operator kit's statuses -> the table's


@dataclass
class Row:
    """The results of one operator backend or one architecture: check name -> (status, [(status, reason)]): the
    cell's status and the status and reason of each of its cases that did not pass."""

    label: str
    cells: dict[str, tuple[str, list[tuple[str, str]]]]


def operator_rows(model_types: Iterable[str]) -> list[Row]:
    """One row per (operator, backend) of the architectures' operators, each cell summing up its example cases."""
    from ..core.registry import load_plugins
    from ..testing import operators as kit

    architectures = load_plugins()
    operators = {op.name: op for t in model_types for op in architectures[t].config_class.operators}
    rows = []
    for name in sorted(operators):
        by_backend: dict[str, dict[str, list]] = {}
        for check in kit.check_operator(operators[name]):
            by_backend.setdefault(check.backend, {}).setdefault(check.name, []).append(check)
        for backend, checks in by_backend.items():
            cells = {}
            for check_name, results in checks.items():
                statuses = {r.status for r in results}
                status = FAIL if kit.FAIL in statuses else PASS if kit.PASS in statuses else NOT_APPLICABLE
                reasons = sorted(
                    {(_STATUS[r.status], f"[{r.case}] {r.detail}") for r in results if r.status != kit.PASS}
                )
                cells[check_name] = (status, reasons if status != PASS else [])
            rows.append(Row(f"{name}:{backend}", cells))
    return rows


class _Collector:
    """A pytest plugin recording each conformance test's outcome per (model_type, check)."""

    def __init__(self):
        self.rows: dict[str, dict[str, tuple[str, list[tuple[str, str]]]]] = {}

    def pytest_runtest_logreport(self, report):
        if report.when != "call" and not (report.failed or report.skipped):
            return
        test, _, model_type = report.nodeid.rpartition("::")[2].partition("[")
        check = test.removeprefix("test_")
        if report.passed:
            outcome = (PASS, [])
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            outcome = (NOT_APPLICABLE, [(NOT_APPLICABLE, reason.removeprefix("Skipped: "))])
        else:
            lines = [line for line in report.longreprtext.splitlines() if line.startswith("E ")]
            outcome = (FAIL, [(FAIL, " ".join(line[1:].strip() for line in lines[:3]) or report.longreprtext[-300:])])
        self.rows.setdefault(model_type.rstrip("]"), {})[check] = outcome


def model_rows(model_types: list[str]) -> list[Row]:
    """One row per architecture, and per variant case ("seqp_gru+ngram": a backbone option on it): the model
    conformance suite run by pytest on these model types only."""
    import pytest

    from ..testing import conformance

    collector = _Collector()
    previous = os.environ.get(conformance.CONFORMANCE_ENV_VAR)
    os.environ[conformance.CONFORMANCE_ENV_VAR] = ",".join(model_types)
    try:
        pytest.main(
            [str(Path(conformance.__file__)), "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-W", "ignore"],
            plugins=[collector],
        )
    finally:
        if previous is None:
            os.environ.pop(conformance.CONFORMANCE_ENV_VAR)
        else:
            os.environ[conformance.CONFORMANCE_ENV_VAR] = previous
    cases = model_types + sorted(case for case in collector.rows if case not in model_types)
    return [Row(t, collector.rows.get(t, {"suite": (FAIL, [(FAIL, "no conformance test ran")])})) for t in cases]


def render(title: str, rows: list[Row]) -> tuple[str, bool]:
    """A table (rows x numbered check columns, with a legend) and the reasons below it; and whether any failed."""
    checks = list(dict.fromkeys(name for row in rows for name in row.cells))
    width = max([len(title)] + [len(row.label) for row in rows])
    lines = [f"{title:{width}}  " + " ".join(f"{i + 1:>4}" for i in range(len(checks)))]
    notes, failed = [], False
    for row in rows:
        cells = []
        for name in checks:
            status, reasons = row.cells.get(name, ("-", []))
            cells.append(f"{status:>4}")
            failed |= status == FAIL
            notes += [(own, f"  {own:4} {row.label} {name}: {reason}") for own, reason in reasons]
        lines.append(f"{row.label:{width}}  " + " ".join(cells))
    legend = [f"{i + 1} {name}" for i, name in enumerate(checks)]
    lines += ["  " + line for line in _wrap(legend, "; ", 110)]
    failures = [note for status, note in notes if status == FAIL]
    not_applicable = [note for status, note in notes if status != FAIL]
    if failures:
        lines += ["failures:", *failures]
    if not_applicable:
        lines += ["not applicable here:", *not_applicable]
    return "\n".join(lines), failed


def _wrap(items: list[str], separator: str, width: int) -> list[str]:
    """`items` joined by `separator` into lines of at most `width` characters, never breaking an item."""
    lines = [""]
    for item in items:
        candidate = f"{lines[-1]}{separator}{item}" if lines[-1] else item
        if len(candidate) > width and lines[-1]:
            lines.append(item)
        else:
            lines[-1] = candidate
    return lines


def run(model_types: list[str] | None = None, operators_only: bool = False) -> int:
    """Check `model_types` (default: every installed architecture), print the tables; 1 if anything failed.

    Without CUDA the Triton backends are checked in Triton's interpreter, which must be chosen before Triton is
    first imported: a process that has not chosen it runs the check in a fresh interpreter that has."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        command = [
            sys.executable,
            "-m",
            __name__,
            *(model_types or []),
            *(["--operators-only"] if operators_only else []),
        ]
        # PYTHONSAFEPATH: the working directory (maybe a checkout, whose kernels/ folder would shadow the
        # `kernels` distribution transformers imports) stays off sys.path
        environment = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONSAFEPATH": "1"}
        return subprocess.run(command, env=environment, check=False).returncode
    from ..core.registry import load_plugins

    installed = sorted(load_plugins())
    model_types = model_types or installed
    unknown = sorted(set(model_types) - set(installed))
    if unknown:
        print(f"error: unknown model types {unknown}; installed: {installed}")
        return 2
    table, failed = render("operator:backend", operator_rows(model_types))
    print(table)
    if not operators_only:
        table, models_failed = render("architecture", model_rows(model_types))
        print(table)
        failed |= models_failed
    print("FAILED" if failed else "all checks pass")
    return 1 if failed else 0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    sys.exit(run([a for a in arguments if a != "--operators-only"], "--operators-only" in arguments))
