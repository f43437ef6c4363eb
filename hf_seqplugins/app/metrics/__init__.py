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


def trainer_metrics(eval_dataset=None) -> dict:
    """Keyword arguments for `Trainer(...)` that report accuracy on every evaluation, keeping only argmax ids in
    memory instead of full logits. For a causal LM: the `recall_accuracy` module's `accuracy` and `sequence_accuracy`
    over the labelled positions (labels shifted as in the loss); when `eval_dataset` has a `dfa` column (RegBench),
    `dfa_accuracy` too (Trainer evaluates rows in order). For a sequence classifier (one label per row, logits
    `[B, num_labels]`): the `classification_accuracy` module's `accuracy`."""
    metric = load("recall_accuracy")
    classification_metric = load("classification_accuracy")
    dfa_metric = load("dfa_accuracy") if eval_dataset is not None and "dfa" in eval_dataset.column_names else None

    def preprocess_logits_for_metrics(logits, labels):
        return logits.argmax(-1)

    def compute_metrics(evaluation):
        if evaluation.label_ids.ndim == 1:
            return classification_metric.compute(
                predictions=evaluation.predictions.tolist(), references=evaluation.label_ids.tolist()
            )
        predictions, labels = evaluation.predictions[:, :-1], evaluation.label_ids[:, 1:]
        scored = labels != -100
        scores = metric.compute(
            predictions=[row[keep].tolist() for row, keep in zip(predictions, scored)],
            references=[row[keep].tolist() for row, keep in zip(labels, scored)],
        )
        if dfa_metric is not None:
            if len(evaluation.predictions) != len(eval_dataset):
                raise ValueError(
                    f"dfa_accuracy: {len(evaluation.predictions)} predictions for the {len(eval_dataset)} rows "
                    "given to trainer_metrics(eval_dataset): evaluate on that dataset, or build the metrics for the "
                    "other one"
                )
            rows = eval_dataset.select_columns(["input_ids", "dfa"])[:]
            scores.update(
                dfa_metric.compute(
                    predictions=evaluation.predictions.tolist(), references=rows["input_ids"], dfa=rows["dfa"]
                )
            )
        return scores

    return {"compute_metrics": compute_metrics, "preprocess_logits_for_metrics": preprocess_logits_for_metrics}
