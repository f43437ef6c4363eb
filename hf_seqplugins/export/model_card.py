"""Model cards rendered with huggingface_hub's `ModelCard` / `ModelCardData` from `model_cards/`.

`default.md` is the whole card; `<model_type>.md` (or a plugin's `Architecture.model_card_template`)
is a Jinja template of the architecture section, rendered with the model's `config`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import PreTrainedModel

from ..core.registry import load_plugins

LIMITATIONS = (
    "A recurrent model compresses its whole context into a fixed-size state: recall of exact details "
    "far back in long contexts is limited by that state's capacity, and behaviour beyond the sequence "
    "lengths seen in training has not been evaluated unless the results above say so."
)
CITATION = """Cite the paper named under *Architecture*, and the library:

```bibtex
@software{hf_seqplugins,
  title = {hf-seqplugins: recurrent, state-space and linear-attention models for Hugging Face transformers},
  year = {2026},
}
```"""


def _pipeline_tag(model: PreTrainedModel) -> str:
    return "text-classification" if type(model).__name__.endswith("ForSequenceClassification") else "text-generation"


def render_model_card(
    model: PreTrainedModel,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
    results: list[dict] | None = None,
    training: str | None = None,
) -> ModelCard:
    """The card of `model`.

    Args:
        repo_id: the Hub repository id shown in the loading examples (default: the examples load the folder itself,
            and the card names the model by its model_type).
        license: SPDX-style license id for the Hub metadata.
        datasets: Hub dataset ids or names the model was trained on.
        results: evaluation results, each ``{"dataset": name, "metric": type, "value": float}`` with
            optional ``"metric_name"`` and ``"split"``; they become the Hub's `model-index`.
        training: a paragraph on how the model was trained.
    """
    config = model.config
    architecture = load_plugins().get(config.model_type)
    if architecture is None:
        raise ValueError(f"model_type {config.model_type!r} is not a registered hf_seqplugins architecture")
    templates = files("hf_seqplugins.model_cards")
    section_path = architecture.model_card_template or templates / f"{config.model_type}.md"
    section_template = Path(section_path).read_text() if Path(section_path).exists() else architecture.description
    architecture_section = jinja2.Template(section_template).render(config=config).strip()

    model_name = repo_id.split("/")[-1] if repo_id else config.model_type
    pipeline_tag = _pipeline_tag(model)
    eval_results = [
        EvalResult(
            task_type=pipeline_tag,
            dataset_type=result["dataset"],
            dataset_name=result["dataset"],
            dataset_split=result.get("split"),
            metric_type=result["metric"],
            metric_name=result.get("metric_name", result["metric"]),
            metric_value=result["value"],
        )
        for result in results or []
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=license,
        tags=["hf-seqplugins", config.model_type, "recurrent"],
        datasets=datasets,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    results_section = (
        "\n".join(f"- {r['dataset']}: {r.get('metric_name', r['metric'])} = {r['value']:.4g}" for r in results)
        if results
        else "No evaluation results were recorded with this export."
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(templates / "default.md"),
        model_id=model_name,
        repo_id=repo_id or "path/to/this/folder",
        summary=f"A `{config.model_type}` model ({type(model).__name__}, {model.num_parameters():,} parameters).",
        architecture_section=architecture_section,
        config_rows=sorted(
            (k, v)
            for k, v in config.to_diff_dict().items()
            if k not in ("auto_map", "architectures", "transformers_version")
        ),
        training_section=training or "No training details were recorded with this export.",
        results_section=results_section,
        limitations=LIMITATIONS,
        citation=CITATION,
    )
