"""The shipped `evaluate` metric modules, loaded offline by path."""
import math

import pytest

from hf_seqplugins import metrics


def test_available_lists_the_shipped_modules():
    assert {"bits_per_byte", "recall_accuracy"} <= set(metrics.available())


def test_bits_per_byte():
    metric = metrics.load("bits_per_byte")
    result = metric.compute(nll=[math.log(2) * 3, math.log(2) * 5], num_bytes=[2, 6])
    assert result["bits_per_byte"] == pytest.approx(1.0)
    assert result["perplexity"] == pytest.approx(2.0)


def test_recall_accuracy_scores_only_queried_positions():
    metric = metrics.load("recall_accuracy")
    result = metric.compute(predictions=[[5, 1, 2], [7, 3, 9]], references=[[-100, 1, 2], [-100, 3, 4]])
    assert result == {"accuracy": pytest.approx(0.75), "sequence_accuracy": pytest.approx(0.5)}
    with pytest.raises(ValueError, match="no scored positions"):
        metric.compute(predictions=[[1]], references=[[-100]])


def test_unknown_metric_names_the_shipped_ones():
    with pytest.raises(ValueError, match="bits_per_byte"):
        metrics.load("accuracy")
