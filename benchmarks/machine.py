"""Describe the machine a benchmark ran on, for the header of its results file."""
import os
import platform

import torch


def describe() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (
        f"- CPU: {cpu}, {os.cpu_count()} cores, torch threads: {torch.get_num_threads()}\n"
        f"- GPU: {gpu}\n"
        f"- Python {platform.python_version()}, torch {torch.__version__}, {platform.system()} {platform.machine()}"
    )
