"""Push a model to the Hugging Face Hub: export it, then `create_repo` + `upload_folder`."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled
from transformers import PreTrainedModel

from .remote_code import export


class PushError(RuntimeError):
    """The Hub refused or could not be reached; the message says what to do."""


@dataclass(frozen=True)
class PushResult:
    """What was (or, with `dry_run`, would be) uploaded, and where."""

    repo_id: str
    revision: str | None
    files: list[tuple[str, int]]
    url: str | None


_HTTP_HINTS = {
    401: "the Hub did not accept the credentials: log in with `hf auth login` or pass token=...",
    403: "no permission to write to this repository (check the token's write scope and the organisation)",
    409: "the repository name is taken or conflicts with an existing one: choose another repo_id",
    404: "the repository or revision was not found: check repo_id and revision",
}


def _unreachable(error: Exception) -> bool:
    """A connection that never got an answer (no network, DNS, proxy): an OSError, or the HTTP client's transport
    error (huggingface_hub's client is httpx, renamed httpx2 in some releases, so it is matched by name)."""
    return isinstance(error, OSError) or any(
        cls.__name__ == "TransportError" and cls.__module__.startswith("httpx") for cls in type(error).__mro__
    )


def _explain(error: Exception, repo_id: str) -> PushError:
    if isinstance(error, OfflineModeIsEnabled):
        return PushError(f"cannot push {repo_id!r}: HF_HUB_OFFLINE=1 is set; unset it to reach the Hub")
    if isinstance(error, LocalTokenNotFoundError):
        return PushError(
            f"cannot push {repo_id!r}: no Hugging Face token; log in with `hf auth login` or pass token=..."
        )
    if isinstance(error, HFValidationError):
        return PushError(f"invalid repo_id {repo_id!r}: {error}")
    status = getattr(getattr(error, "response", None), "status_code", None)
    hint = _HTTP_HINTS.get(status, "the Hub answered with an error")
    return PushError(f"cannot push {repo_id!r}: {hint} (HTTP {status}: {error})")


def push_to_hub(
    model: PreTrainedModel,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    tokenizer=None,
    **card_fields,
) -> PushResult:
    """Export `model` (weights, remote code, model card, and `tokenizer` if given) and upload it to `repo_id`.

    With `dry_run=True` nothing is contacted: the result lists the files that would be uploaded.
    `card_fields` (license, datasets, results, training) go to the model card. Hub errors (no token,
    no permission, name taken, offline) are raised as `PushError` with what to do.
    """
    with tempfile.TemporaryDirectory() as folder:
        export(model, folder, repo_id=repo_id, tokenizer=tokenizer, **card_fields)
        files = sorted((str(p.relative_to(folder)), p.stat().st_size) for p in Path(folder).rglob("*") if p.is_file())
        if dry_run:
            return PushResult(repo_id, revision, files, None)
        api = HfApi(token=token)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                commit_message=commit_message or f"Upload {model.config.model_type} with hf-seqplugins",
            )
        except (HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled, HFValidationError) as error:
            raise _explain(error, repo_id) from error
        except Exception as error:
            if not _unreachable(error):
                raise
            raise PushError(
                f"cannot push {repo_id!r}: the Hub is unreachable ({type(error).__name__}: {error}); "
                "check the network, or set HF_HUB_OFFLINE=1 to work offline"
            ) from error
    return PushResult(repo_id, revision, files, str(url))
