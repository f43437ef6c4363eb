"""Exported folders load with trust_remote_code in an interpreter that cannot import hf_seqplugins."""

import importlib
import importlib.resources
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_seqplugins.core.registry import load_plugins
from hf_seqplugins.export import export
from hf_seqplugins.testing import clean_environment, run_without_package, tiny_config

BUILT_IN = sorted(t for t, a in load_plugins().items() if a.distribution == "hf-seqplugins")
ALL = sorted(load_plugins())

CLEAN_LOADER = textwrap.dedent(
    """
    import importlib.util, json, sys
    for package in ("hf_seqplugins", sys.argv[2]):
        assert importlib.util.find_spec(package) is None, f"{package} is importable: the check proves nothing"
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
    folder = sys.argv[1]
    ids = torch.load(folder + "/ids.pt")
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert "hf_seqplugins" not in sys.modules
    with torch.no_grad():
        result = {
            "config": type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__,
            "base": type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__,
            "classifier": type(
                AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
            ).__name__,
        }
        model.save_pretrained(folder + "/resaved")  # a checkpoint saved from remote code stays loadable
        resaved = AutoModelForCausalLM.from_pretrained(folder + "/resaved", trust_remote_code=True).eval()
        assert torch.equal(resaved(ids).logits, model(ids).logits)
        torch.save({"logits": model(ids).logits,
                    "generated": model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)},
                   folder + "/clean.pt")
    print(json.dumps(result))
    """
)


@pytest.mark.parametrize(
    ("model_type", "options"),
    [(t, {}) for t in ALL] + [pytest.param("seqp_gru", {"ngram_layers": [1], "ngram_orders": 2}, id="seqp_gru+ngram")],
)
def test_export_loads_without_the_package(model_type, options, tmp_path):
    """Built-in and third-party architectures alike (and a backbone option, n-gram heads): neither this package
    nor the plugin's is importable."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, initializer_range=0.3, **options)).eval()
    folder = export(model, tmp_path / "export")
    assert (folder / "model.safetensors").exists()
    assert not list(folder.glob("*.bin"))
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"} <= set(auto_map)
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    torch.save(ids, folder / "ids.pt")

    plugin_package = load_plugins()[model_type].config_class.__module__.split(".")[0]
    stdout = run_without_package(CLEAN_LOADER, str(folder), plugin_package, work_dir=tmp_path / "cwd")
    classes = json.loads(stdout.strip().splitlines()[-1])
    architecture = load_plugins()[model_type]
    assert classes == {
        "config": architecture.config_class.__name__,
        "base": architecture.model_classes["AutoModel"].__name__,
        "classifier": architecture.model_classes["AutoModelForSequenceClassification"].__name__,
    }
    clean = torch.load(folder / "clean.pt")
    with torch.no_grad():
        assert torch.equal(clean["logits"], model(ids).logits)
        assert torch.equal(clean["generated"], model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False))


def test_exported_folder_loads_natively_when_the_plugin_is_installed(tmp_path):
    model = AutoModelForCausalLM.from_config(tiny_config("seqp_gru")).eval()
    folder = export(model, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert type(loaded) is type(model)
    ids = torch.randint(0, 32, (1, 4))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("model_type", BUILT_IN)
def test_export_writes_a_model_card_that_parses_back(model_type, tmp_path):
    from huggingface_hub import ModelCard

    model = AutoModelForCausalLM.from_config(tiny_config(model_type))
    results = [{"dataset": "pydoc topics", "metric": "bits_per_byte", "value": 1.75, "split": "test"}]
    export(model, tmp_path, repo_id="someone/tiny", datasets=["pydoc"], results=results, training="Two steps.")
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert model_type in data["tags"] and data["datasets"] == ["pydoc"]
    metric = data["model-index"][0]["results"][0]["metrics"][0]
    assert (metric["type"], metric["value"]) == ("bits_per_byte", 1.75)
    template = importlib.resources.files("hf_seqplugins.model_cards").joinpath(f"{model_type}.md").read_text()
    paper = next(line for line in template.splitlines() if line.startswith("Paper: "))
    assert paper in card.text, "the architecture's own section (with its paper) is in the card"
    assert 'from_pretrained("someone/tiny", trust_remote_code=True)' in card.text
    assert "Two steps." in card.text and f"| `hidden_size` | `{model.config.hidden_size}` |" in card.text


HUB_LOADER = textwrap.dedent(
    """
    import importlib.util, sys
    assert importlib.util.find_spec("hf_seqplugins") is None
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("someone/tiny-gru", trust_remote_code=True).eval()
    with torch.no_grad():
        torch.save(model(torch.arange(6)[None] % 32).logits, sys.argv[1])
    """
)


def test_repository_id_loads_from_the_offline_hub_cache(tmp_path):
    """A snapshot laid out as huggingface_hub lays it (refs/main -> snapshots/<commit>) loads by repo id offline."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("seqp_gru")).eval()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-gru"
    export(model, repo / "snapshots" / commit, repo_id="someone/tiny-gru")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = clean_environment(tmp_path / "modules") | {"HF_HUB_CACHE": str(tmp_path / "hub")}
    result = subprocess.run(
        [sys.executable, "-S", "-c", HUB_LOADER, str(tmp_path / "logits.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "logits.pt"), model(torch.arange(6)[None] % 32).logits)


def test_remote_code_is_flattened_once_per_process(tmp_path, monkeypatch):
    """Every save writes the same flat files, but only the first (or one after a source file changed) flattens."""
    from hf_seqplugins.export import remote_code

    monkeypatch.setattr(remote_code, "_FLAT_CACHE", {})
    calls = []
    flatten = remote_code.flatten_source
    monkeypatch.setattr(
        remote_code, "flatten_source", lambda module, packages: calls.append(module) or flatten(module, packages)
    )
    model = AutoModelForCausalLM.from_config(tiny_config("seqp_gru"))
    model.save_pretrained(tmp_path / "first")
    flattened = len(calls)
    assert flattened > 0
    model.save_pretrained(tmp_path / "second")
    assert len(calls) == flattened, "the second save reuses the flat texts"
    written = sorted(path.name for path in (tmp_path / "first").glob("*.py"))
    assert len(written) == flattened and written == sorted(path.name for path in (tmp_path / "second").glob("*.py"))
    for name in written:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name

    # Editing a source file (its mtime and size) recomputes: a throwaway package, so no real file is touched.
    source = tmp_path / "probe_pkg" / "probe.py"
    source.parent.mkdir()
    (source.parent / "__init__.py").write_text("")
    source.write_text("from hf_seqplugins.core.cache import read_state\n\n\nclass Probe:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "probe_pkg", raising=False)
    monkeypatch.delitem(sys.modules, "probe_pkg.probe", raising=False)
    probe = importlib.import_module("probe_pkg.probe").Probe
    files = remote_code.flat_sources([probe])
    assert files["probe_pkg_probe.py"].splitlines()[1] == "from .seqp_core_cache import read_state"
    calls.clear()
    assert remote_code.flat_sources([probe]) == files and calls == []
    source.write_text(source.read_text() + "# edited\n")
    edited = remote_code.flat_sources([probe])
    assert calls and edited["probe_pkg_probe.py"] == files["probe_pkg_probe.py"] + "# edited\n"
    stat = source.stat()
    calls.clear()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # only the mtime changes
    assert remote_code.flat_sources([probe]) == edited and calls


def test_saving_another_architecture_into_a_folder_removes_only_our_stale_files(tmp_path):
    AutoModelForCausalLM.from_config(tiny_config("seqp_xlstm")).save_pretrained(tmp_path)
    assert (tmp_path / "seqp_plugins_xlstm_modeling.py").exists()
    (tmp_path / "my_notes.py").write_text("# the user's own file\n")
    AutoModelForCausalLM.from_config(tiny_config("seqp_gru")).save_pretrained(tmp_path)
    written = {path.name for path in tmp_path.glob("*.py")}
    assert "seqp_plugins_xlstm_modeling.py" not in written and "seqp_kernels_mlstm_reference.py" not in written
    assert {"seqp_plugins_rnn_modeling.py", "my_notes.py"} <= written
    assert AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).config.model_type == "seqp_gru"


def test_a_card_without_repo_id_has_no_placeholder(tmp_path):
    from huggingface_hub import ModelCard

    model = AutoModelForCausalLM.from_config(tiny_config("seqp_gru"))
    export(model, tmp_path, results=[{"dataset": "toy", "metric": "accuracy", "value": 0.5}])
    card = ModelCard.load(tmp_path / "README.md")
    assert "<your-name>" not in card.content and 'from_pretrained("path/to/this/folder"' in card.content
    assert card.data.to_dict()["model-index"][0]["name"] == "seqp_gru"
