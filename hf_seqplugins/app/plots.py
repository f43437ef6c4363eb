"""PNG plots with matplotlib (headless): training curves, measurements against sequence length, and the ponder time
per position of an adaptive-depth model."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curve(log_history: list[dict], path: str | Path, title: str = "training") -> Path:
    """Loss against step from `Trainer.state.log_history` (training loss, and eval loss where logged)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        if points:
            axis.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=label)
    axis.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(figure, path)


def against_length(
    series: dict[str, list[tuple[int, float]]],
    path: str | Path,
    ylabel: str,
    title: str,
    log_x: bool = True,
    log_y: bool = False,
) -> Path:
    """One line per name of (length, value) points, e.g. decode latency or accuracy vs context length (log-log
    axes show power laws as straight lines: slope 1 linear, 2 quadratic)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        axis.plot(*zip(*points), marker="o", label=name)
    if log_x:
        axis.set_xscale("log", base=2)
    if log_y:
        axis.set_yscale("log")
    axis.set(xlabel="sequence length (tokens)", ylabel=ylabel, title=title)
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(figure, path)


def ponder_times(
    steps: list[float], path: str | Path, tokens: list[str] | None = None, title: str = "ponder time"
) -> Path:
    """Bars of the depth steps each position ran (a Universal Transformer's `ponder_times` of one row under adaptive
    computation time, e.g. ``output.ponder_times[0].tolist()``), labelled with the row's `tokens` when given."""
    if tokens is not None and len(tokens) != len(steps):
        raise ValueError(f"tokens has {len(tokens)} labels for {len(steps)} positions")
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6, 0.3 * len(steps)), 3))
    axis.bar(range(len(steps)), steps)
    if tokens is not None:
        axis.set_xticks(range(len(steps)), tokens, rotation=90)
    axis.set(xlabel="position", ylabel="steps", title=title)
    axis.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def _save(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    _pyplot().close(figure)
    return path
