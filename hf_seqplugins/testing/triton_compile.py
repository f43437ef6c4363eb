"""Compile checks for Triton kernels on a machine without a GPU.

The Triton interpreter (``TRITON_INTERPRET=1``) runs a kernel's Python semantics but never its GPU compiler, so a
kernel that the interpreter accepts can still fail to lower, or need more shared memory than a GPU has. A compile
script calls ``triton.compile(ASTSource(...), target=GPUTarget("cuda", capability, 32))`` for the shapes the
wrapper launches and prints one JSON object as its last line; `run_compile_script` runs it where the interpreter
is off and returns that object::

    result = run_compile_script(COMPILE_SCRIPT, [80, 90], "fp32")
    assert_fits_shared_memory(result["shared"])  # {"sm_80 ...": bytes, ...}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Largest dynamic shared memory one program may use: A100 (sm_80) and H100 (sm_90).
SHARED_MEMORY_LIMIT = {80: 166912, 90: 232448}


def run_compile_script(script: str, *arguments) -> dict:
    """Runs `script` (Python source; `arguments` reach it JSON-encoded as ``sys.argv[1:]``) in a fresh interpreter
    without TRITON_INTERPRET and returns the JSON object on the last line of its output. Raises AssertionError with
    the end of its stderr when it fails."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run(
        [sys.executable, "-P", "-c", script, *(json.dumps(argument) for argument in arguments)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"the compile script failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_fits_shared_memory(shared: dict[str, int]) -> None:
    """`shared` maps names that start with the target (``"sm_80 ..."``) to the bytes of shared memory the compiled
    kernel needs; each must fit that target's `SHARED_MEMORY_LIMIT`."""
    for name, needed in shared.items():
        capability = int(name.split()[0].removeprefix("sm_"))
        assert needed <= SHARED_MEMORY_LIMIT[capability], f"{name} needs {needed} bytes of shared memory"
