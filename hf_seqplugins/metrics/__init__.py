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


def trainer_metrics() -> dict:
    """Keyword arguments for `Trainer(...)` that report the `recall_accuracy` module's `accuracy` and
    `sequence_accuracy` over the labelled positions of a causal LM (labels shifted as in the loss) on every
    evaluation, keeping only argmax ids in memory instead of full logits."""
    metric = load("recall_accuracy")

    def preprocess_logits_for_metrics(logits, labels):
        return logits.argmax(-1)

    def compute_metrics(evaluation):
        predictions, labels = evaluation.predictions[:, :-1], evaluation.label_ids[:, 1:]
        scored = labels != -100
        return metric.compute(
            predictions=[row[keep].tolist() for row, keep in zip(predictions, scored)],
            references=[row[keep].tolist() for row, keep in zip(labels, scored)],
        )

    return {"compute_metrics": compute_metrics, "preprocess_logits_for_metrics": preprocess_logits_for_metrics}
