"""`evaluate` metric modules shipped with the project (the Hub, where evaluate looks by default, is
not needed): `load("bits_per_byte")` is `evaluate.load(<path of the module>)`."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def available() -> list[str]:
    """Names of the shipped metric modules."""
    return sorted(p.name for p in HERE.iterdir() if (p / f"{p.name}.py").is_file())


def load(name: str, **kwargs):
    """Load a shipped metric module with `evaluate.load`, offline."""
    import evaluate

    if name not in available():
        raise ValueError(f"unknown metric {name!r}; shipped metrics: {available()}")
    return evaluate.load(str(HERE / name), **kwargs)
