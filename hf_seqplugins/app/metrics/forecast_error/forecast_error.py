"""Forecast error: mean squared and mean absolute error of predicted against true future values."""

import datasets
import evaluate

_DESCRIPTION = """Mean squared error (mse) and mean absolute error (mae) over every forecast value of every example
(each example a [prediction_length, channels] array, flattened)."""
_INPUTS = """
Args:
    predictions: per example, the forecast values (a flat list, or nested lists flattened first).
    references: per example, the true values, of the same size.
Returns:
    mse, mae.
"""


def _flat(values):
    return [x for item in values for x in (_flat(item) if isinstance(item, (list, tuple)) else [item])]


class ForecastError(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, predictions, references):
        pairs = [
            (p, r)
            for prediction, reference in zip(predictions, references)
            for p, r in zip(_flat(prediction), _flat(reference), strict=True)
        ]
        if not pairs:
            raise ValueError("no values to score")
        return {
            "mse": sum((p - r) ** 2 for p, r in pairs) / len(pairs),
            "mae": sum(abs(p - r) for p, r in pairs) / len(pairs),
        }
