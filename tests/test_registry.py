"""Plugin discovery through entry points: built-ins, third-party, broken, duplicate and allow-listed plugins."""

import textwrap
import warnings
from importlib.metadata import entry_points

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hf_seqplugins
from hf_seqplugins.core.registry import (
    ALLOW_LIST_ENV_VAR,
    ENTRY_POINT_GROUP,
    DuplicateModelTypeError,
    PluginLoadWarning,
    discover,
    register_with_transformers,
)

BUILT_IN = {"seqp_elman", "seqp_lstm", "seqp_gru", "seqp_slstm"}

GOOD_PLUGIN = """
from hf_seqplugins import Architecture, hookimpl, SeqForCausalLM, SeqModel
from hf_seqplugins.plugins.rnn import HeadwiseRNNConfig, HeadwiseRNNMixer

class ToyConfig(HeadwiseRNNConfig):
    model_type = "{model_type}"
    cell = "gru"

class ToyModel(SeqModel):
    config_class = ToyConfig
    mixer_class = HeadwiseRNNMixer

class ToyForCausalLM(SeqForCausalLM):
    config_class = ToyConfig
    backbone_class = ToyModel

@hookimpl
def seqplugins_architectures():
    return [Architecture("{model_type}", ToyConfig, {{"AutoModel": ToyModel, "AutoModelForCausalLM": ToyForCausalLM}},
                         api_version={api_version},
                         tiny_config={{"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 16}})]
"""


@pytest.fixture
def make_distribution(tmp_path, monkeypatch):
    """Install a fake distribution (dist-info + module) on sys.path and return its entry points."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(distribution: str, module: str, source: str):
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{distribution}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{module} = {module}\n")
        return [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == module]

    return make


def _builtin_entry_points():
    return [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "rnn"]


def test_builtins_are_discovered_through_entry_points():
    found = discover(_builtin_entry_points())
    assert BUILT_IN <= set(found)
    assert {found[t].distribution for t in BUILT_IN} == {"hf-seqplugins"}


def test_import_registers_auto_classes():
    info = hf_seqplugins.available_architectures()
    assert BUILT_IN <= set(info)
    lstm = info["seqp_lstm"]
    assert {"reference", "torch"} <= set(lstm.backends["headwise_rnn"])
    assert set(lstm.model_classes) == {"AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"}
    assert type(AutoConfig.for_model("seqp_lstm")) is lstm.config_class


def test_registration_is_idempotent():
    first = hf_seqplugins.load_plugins(reload=True)
    second = hf_seqplugins.load_plugins(reload=True)
    assert first.keys() == second.keys()
    assert type(AutoConfig.for_model("seqp_gru")).__name__ == "GRUConfig"


def test_third_party_plugin_loads_and_builds(make_distribution):
    eps = make_distribution("toy-plugin", "toy_plugin_ok", GOOD_PLUGIN.format(model_type="seqp_toy", api_version=1))
    found = discover(eps)
    assert found["seqp_toy"].distribution == "toy-plugin"
    register_with_transformers(found)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("seqp_toy", **found["seqp_toy"].tiny_config))
    assert model(torch.randint(0, 16, (1, 4))).logits.shape == (1, 4, 16)


def test_broken_plugin_is_skipped_with_a_warning_naming_it(make_distribution):
    broken = make_distribution("broken-plugin", "broken_plugin_mod", "raise ImportError('needs libfoo')\n")
    with pytest.warns(PluginLoadWarning, match=r"broken-plugin.*ImportError: needs libfoo"):
        found = discover(broken + _builtin_entry_points())
    assert BUILT_IN <= set(found)


def test_plugin_without_prefix_is_skipped(make_distribution):
    eps = make_distribution("bad-prefix", "bad_prefix_mod", GOOD_PLUGIN.format(model_type="mamba2", api_version=1))
    with pytest.warns(PluginLoadWarning, match="must start with 'seqp_'"):
        assert discover(eps) == {}


def test_plugin_for_another_api_version_is_refused(make_distribution):
    eps = make_distribution(
        "future-plugin", "future_plugin_mod", GOOD_PLUGIN.format(model_type="seqp_future", api_version=2)
    )
    with pytest.warns(PluginLoadWarning, match=r"future-plugin.*plugin API version 2.*provides version 1"):
        assert discover(eps) == {}


def test_plugin_with_malformed_tiny_variants_is_refused(make_distribution):
    source = GOOD_PLUGIN.format(model_type="seqp_variants", api_version=1).replace(
        '"vocab_size": 16})', '"vocab_size": 16}, tiny_variants={"two words": {}})'
    )
    assert "tiny_variants" in source
    eps = make_distribution("variants-plugin", "variants_plugin_mod", source)
    with pytest.warns(PluginLoadWarning, match=r"tiny_variants must map identifier names"):
        assert discover(eps) == {}


def test_module_without_hook_is_skipped(make_distribution):
    eps = make_distribution("no-hook", "no_hook_mod", "x = 1\n")
    with pytest.warns(PluginLoadWarning, match="no `seqplugins_architectures` hook"):
        assert discover(eps) == {}


def test_duplicate_model_type_names_both_distributions(make_distribution):
    eps = make_distribution("copycat", "copycat_mod", GOOD_PLUGIN.format(model_type="seqp_lstm", api_version=1))
    with pytest.raises(DuplicateModelTypeError, match=r"hf-seqplugins.*copycat"):
        discover(_builtin_entry_points() + eps)


def test_allow_list_restricts_loading(make_distribution, monkeypatch):
    eps = make_distribution("toy-plugin2", "toy_plugin_two", GOOD_PLUGIN.format(model_type="seqp_toy2", api_version=1))
    monkeypatch.setenv(ALLOW_LIST_ENV_VAR, "toy-plugin2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = discover(_builtin_entry_points() + eps)
    assert set(found) == {"seqp_toy2"}
