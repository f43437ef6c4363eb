"""push_to_hub: dry run lists the files; Hub failures become clear PushErrors (no network is used)."""

from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoModelForCausalLM

from hf_seqplugins.export.hub import PushError, push_to_hub
from hf_seqplugins.testing import tiny_config


@pytest.fixture
def model():
    return AutoModelForCausalLM.from_config(tiny_config("seqp_gru"))


def test_dry_run_lists_what_would_be_uploaded(model):
    result = push_to_hub(model, "someone/tiny-gru", dry_run=True)
    names = {name for name, size in result.files}
    assert {"config.json", "model.safetensors", "README.md", "seqp_plugins_rnn_modeling.py"} <= names
    assert all(size > 0 for _, size in result.files) and result.url is None


def test_offline_push_says_so(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE"):
        push_to_hub(model, "someone/tiny-gru", token="hf_fake")


@pytest.mark.parametrize("status, message", [(401, "log in"), (403, "no permission"), (409, "name is taken")])
def test_hub_http_errors_are_explained(model, monkeypatch, status, message):
    def refuse(self, *args, **kwargs):
        raise HfHubHTTPError("refused", response=SimpleNamespace(status_code=status, headers={}, request=None))

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(PushError, match=message):
        push_to_hub(model, "someone/tiny-gru", token="hf_fake")


def test_upload_goes_to_the_requested_revision(model, monkeypatch):
    calls = {}
    monkeypatch.setattr(
        HfApi,
        "create_repo",
        lambda self, repo_id, **kw: calls.setdefault("repo", (repo_id, kw["private"])) and "https://hub/x",
    )
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, branch, **kw: calls.setdefault("branch", branch))
    monkeypatch.setattr(
        HfApi, "upload_folder", lambda self, **kw: calls.setdefault("upload", (kw["revision"], kw["commit_message"]))
    )
    result = push_to_hub(
        model, "someone/tiny-gru", private=True, revision="v1", commit_message="first", token="hf_fake"
    )
    assert calls == {"repo": ("someone/tiny-gru", True), "branch": "v1", "upload": ("v1", "first")}
    assert result.revision == "v1"


@pytest.mark.parametrize("transport", ["httpx", "httpx2"])
def test_an_unreachable_hub_is_said_so(model, monkeypatch, transport):
    """No network: the HTTP client's transport error (httpx, or httpx2 in newer huggingface_hub) becomes a
    PushError that says the Hub is unreachable; other errors are not swallowed."""
    transport_error = type("TransportError", (Exception,), {"__module__": transport})
    connect_error = type("ConnectError", (transport_error,), {"__module__": transport})

    def no_network(self, repo_id, **kwargs):
        raise connect_error("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(HfApi, "create_repo", no_network)
    with pytest.raises(PushError, match="the Hub is unreachable"):
        push_to_hub(model, "someone/tiny-gru", token="hf_fake")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        push_to_hub(model, "someone/tiny-gru", token="hf_fake")
