"""Exact-match accuracy on the queried positions of recall tasks (MQAR, selective copying, passkey)."""

import datasets
import evaluate

_DESCRIPTION = """Token accuracy over the positions whose reference is not -100 (the queried answers), and the
fraction of examples whose every queried position is right."""
_INPUTS = """
Args:
    predictions: per example, the predicted token ids (argmax of the logits), aligned with references.
    references: per example, the target ids with -100 at positions that are not scored.
Returns:
    accuracy (per queried token), sequence_accuracy (all queried tokens of an example right).
"""


class RecallAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references):
        right = total = whole = 0
        for prediction, reference in zip(predictions, references):
            if len(prediction) != len(reference):
                raise ValueError(f"prediction and reference lengths differ: {len(prediction)} vs {len(reference)}")
            scored = [(p, r) for p, r in zip(prediction, reference) if r != -100]
            hits = sum(p == r for p, r in scored)
            right, total, whole = right + hits, total + len(scored), whole + (hits == len(scored))
        if total == 0:
            raise ValueError("no scored positions: every reference is -100")
        return {"accuracy": right / total, "sequence_accuracy": whole / len(references)}
