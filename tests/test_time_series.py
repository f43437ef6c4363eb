"""Time-series forecasting (`SeqForTimeSeriesPrediction`, Aaren's `AutoModelForTimeSeriesPrediction` head) on the
offline `sine_forecasting` task, scored by the `forecast_error` metric."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForTimeSeriesPrediction, Trainer, TrainingArguments

from hf_seqplugins.app import metrics, tasks

HORIZON, CHANNELS = 4, 2


def forecaster(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "seqp_aaren",
        **{
            "vocab_size": 1,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "intermediate_size": 64,
            "num_heads": 4,
            "num_input_channels": CHANNELS,
            "prediction_length": HORIZON,
            **overrides,
        },
    )
    return AutoModelForTimeSeriesPrediction.from_config(config)


def test_trainer_learns_to_forecast_sines_better_than_the_baselines(tmp_path):
    """After 150 steps the forecast's MSE is well under both naive forecasts: the series' mean (0) and the last
    observed value (persistence); observed about 0.28 against 0.54 and 0.69."""
    train = tasks.sine_forecasting(num_examples=512, length=32, prediction_length=HORIZON, channels=CHANNELS)
    test = tasks.sine_forecasting(num_examples=64, length=32, prediction_length=HORIZON, channels=CHANNELS, seed=1)
    model = forecaster()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=150,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        label_names=["future_values"],
        save_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=train).train()
    model.eval()
    with torch.no_grad():
        predicted = model(past_values=torch.tensor(test["past_values"])).prediction_outputs
    references = torch.tensor(test["future_values"])
    scores = metrics.load("forecast_error").compute(
        predictions=predicted.flatten(1).tolist(), references=references.flatten(1).tolist()
    )
    mean_baseline = float(references.pow(2).mean())
    persistence = float((references - torch.tensor(test["past_values"])[:, -1:]).pow(2).mean())
    assert scores["mse"] < 0.6 * min(mean_baseline, persistence), (scores, mean_baseline, persistence)
    assert scores["mae"] > 0


@torch.no_grad()
def test_left_padding_leaves_the_forecast_unchanged():
    model = forecaster().eval()
    series = torch.randn(2, 12, CHANNELS, generator=torch.Generator().manual_seed(0))
    padded = series.clone()
    padded[1, :3] = float("nan")  # never read
    observed = torch.ones(2, 12, dtype=torch.long)
    observed[1, :3] = 0
    forecast = model(past_values=padded, past_observed_mask=observed).prediction_outputs
    alone = model(past_values=series[1:, 3:]).prediction_outputs
    torch.testing.assert_close(forecast[1:], alone, atol=1e-5, rtol=1e-4)
    per_channel = observed[..., None].expand(-1, -1, CHANNELS)
    torch.testing.assert_close(model(past_values=padded, past_observed_mask=per_channel).prediction_outputs, forecast)


def test_saved_forecaster_reloads_with_its_auto_class(tmp_path):
    model = forecaster().eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    saved = model.state_dict()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in reloaded.state_dict().items())
    series = torch.randn(1, 10, CHANNELS)
    with torch.no_grad():
        # equal weights, but the loaded ones may sit at other memory alignments, where BLAS sums in another order
        torch.testing.assert_close(
            reloaded(past_values=series).prediction_outputs,
            model(past_values=series).prediction_outputs,
            rtol=1e-6,
            atol=1e-7,
        )


def test_bad_shapes_and_config_are_refused():
    model = forecaster()
    with pytest.raises(ValueError, match=r"past_values must be \[batch, time, 2\]"):
        model(past_values=torch.randn(1, 10, 3))
    with pytest.raises(ValueError, match=r"future_values must be \[batch, 4, 2\]"):
        model(past_values=torch.randn(1, 10, 2), future_values=torch.randn(1, 3, 2))
    with pytest.raises(ValueError, match="prediction_length must be an integer >= 1"):
        forecaster(prediction_length=0)
    with pytest.raises(ValueError, match="no values to score"):
        metrics.load("forecast_error").compute(predictions=[], references=[])
