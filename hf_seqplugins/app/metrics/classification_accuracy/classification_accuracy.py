"""Accuracy of a sequence classifier: the fraction of examples whose predicted class is the reference class."""

import datasets
import evaluate

_DESCRIPTION = """The fraction of examples whose predicted class (argmax of the logits) equals the reference class."""
_INPUTS = """
Args:
    predictions: per example, the predicted class id.
    references: per example, the reference class id.
Returns:
    accuracy.
"""


class ClassificationAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        if not references:
            raise ValueError("no examples to score")
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / len(references)}
