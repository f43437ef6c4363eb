"""`hf-seqplugins` command line: list architectures, export and push saved models."""
from __future__ import annotations

import argparse
import json
import sys

from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification


def _load(folder: str):
    """A saved model, in the head it was saved with (from config.architectures)."""
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(folder).architectures or []
    name = architectures[0] if architectures else ""
    auto = (
        AutoModelForCausalLM
        if name.endswith("ForCausalLM")
        else AutoModelForSequenceClassification
        if name.endswith("ForSequenceClassification")
        else AutoModel
    )
    return auto.from_pretrained(folder)


def _card_fields(args) -> dict:
    fields = {"license": args.license}
    if args.results:
        with open(args.results) as f:
            fields["results"] = json.load(f)
    return fields


def main(argv: list[str] | None = None) -> int:
    import hf_seqplugins

    parser = argparse.ArgumentParser(prog="hf-seqplugins", description="Recurrent and state-space models for transformers.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="installed architectures, their backends and source packages")

    export = verbs.add_parser("export", help="write a Hub-ready folder (weights, remote code, model card) from a saved model")
    export.add_argument("model", help="folder written by save_pretrained")
    export.add_argument("output", help="folder to write")
    export.add_argument("--repo-id", help="Hub repository id shown in the model card")

    push = verbs.add_parser("push", help="export a saved model and upload it to the Hugging Face Hub")
    push.add_argument("model", help="folder written by save_pretrained")
    push.add_argument("repo_id", help="e.g. your-name/my-model")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", help="branch to upload to (created if missing)")
    push.add_argument("--message", help="commit message")
    push.add_argument("--dry-run", action="store_true", help="list what would be uploaded, contact nothing")
    for verb in (export, push):
        verb.add_argument("--license", default="apache-2.0")
        verb.add_argument("--results", help="JSON file: a list of {dataset, metric, value} for the model card")

    args = parser.parse_args(argv)
    if args.verb == "list":
        for model_type, info in sorted(hf_seqplugins.available_architectures().items()):
            backends = "; ".join(f"{op}: {', '.join(names)}" for op, names in info.backends.items())
            print(f"{model_type:16} {info.distribution:16} {backends:40} {info.description}")
        return 0
    model = _load(args.model)
    if args.verb == "export":
        folder = hf_seqplugins.export(model, args.output, repo_id=args.repo_id, **_card_fields(args))
        print(f"exported {model.config.model_type} to {folder}")
        return 0
    try:
        result = hf_seqplugins.push_to_hub(
            model, args.repo_id, private=args.private, revision=args.revision, commit_message=args.message,
            dry_run=args.dry_run, **_card_fields(args),
        )
    except hf_seqplugins.PushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, size in result.files:
        print(f"{size:>12,}  {name}")
    print(f"dry run: nothing uploaded to {args.repo_id}" if args.dry_run else f"uploaded to {result.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
