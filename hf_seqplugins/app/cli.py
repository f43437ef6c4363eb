"""`hf-seqplugins` command line: list, check, demo, train, evaluate, generate, bench, export, push."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


def _load(folder: str):
    """A saved model, in the head it was saved with (from config.architectures)."""
    from transformers import AutoConfig

    if not Path(folder).exists() and (folder.startswith((".", "/", "~")) or folder.count("/") != 1):
        raise FileNotFoundError(f"model folder {folder!r} not found (and it is not a Hub repo id 'owner/name')")
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


def _tokenizer(folder: str):
    from .data import byte_tokenizer

    return _saved_tokenizer(folder) or byte_tokenizer()


def _saved_tokenizer(folder: str):
    """The tokenizer saved in `folder`, or None when it holds none."""
    return AutoTokenizer.from_pretrained(folder) if (Path(folder) / "tokenizer_config.json").exists() else None


def _card_fields(args) -> dict:
    fields = {"license": args.license}
    if args.results:
        with open(args.results) as f:
            fields["results"] = json.load(f)
    return fields


def _card_results(task: str, results: dict) -> list[dict]:
    return [
        {"dataset": task, "metric": name, "value": value} for name, value in results.items() if name != "perplexity"
    ]


TASK_ARGS_HELP = (
    "arguments of a synthetic task and its splits, e.g. length=1024 max_depth=6 num_train=512 num_test=128 "
    "(listops, a sequence-classification task, trains AutoModelForSequenceClassification)"
)


def _build_parser(model_types: list[str]) -> argparse.ArgumentParser:
    from .workflows import TASK_CHOICES

    parser = argparse.ArgumentParser(
        prog="hf-seqplugins", description="Recurrent and state-space models for transformers."
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    def add_verb(name: str, **kwargs) -> argparse.ArgumentParser:  # --help shows every default
        return verbs.add_parser(name, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)

    add_verb("list", help="installed architectures, their backends and source packages")
    check = add_verb("check", help="the operator and model conformance kits over installed architectures, as tables")
    check.add_argument("model_types", nargs="*", metavar="MODEL_TYPE", help="default: every installed architecture")
    check.add_argument("--operators-only", action="store_true", help="run the operator kit only (seconds, not minutes)")

    def training_arguments(verb, max_steps, output_dir):
        verb.add_argument("--model-type", default="seqp_lstm", choices=model_types, help="architecture to train")
        verb.add_argument(
            "--task", default="pydoc", help=f"one of {', '.join(TASK_CHOICES)}, or a saved dataset folder"
        )
        verb.add_argument("--text-files", nargs="+", help="train on these UTF-8 text files instead (byte-level)")
        verb.add_argument("--task-args", nargs="*", default=[], metavar="KEY=VALUE", help=TASK_ARGS_HELP)
        verb.add_argument(
            "--config", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. hidden_size=64"
        )
        verb.add_argument("--max-steps", type=int, default=max_steps, help="optimizer steps")
        verb.add_argument("--batch-size", type=int, default=16, help="rows per step")
        verb.add_argument("--learning-rate", type=float, default=3e-3, help="peak learning rate (cosine schedule)")
        verb.add_argument("--block-size", type=int, default=128, help="tokens per row of text data")
        verb.add_argument("--output-dir", default=output_dir, help="checkpoints, the exported model and plots")
        verb.add_argument("--seed", type=int, default=0, help="seed of the init, the data order and the tasks")

    train = add_verb("train", help="train a model with the transformers Trainer, evaluate and export it")
    training_arguments(train, 300, "outputs/run")
    train.add_argument("--lora", action="store_true", help="train LoRA adapters (PEFT) and merge them back")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in --output-dir (same flags, --lora included)",
    )

    demo = add_verb("demo", help="the main job: train, evaluate, generate, export and reload (a few minutes on CPU)")
    training_arguments(demo, 1000, "outputs/demo")

    evaluate = add_verb("evaluate", help="held-out metrics of a saved model on a task (JSON, Markdown, plot)")
    evaluate.add_argument("model", help="folder written by save_pretrained / export")
    evaluate.add_argument("--task", default="pydoc", help="task name or a saved dataset folder")
    evaluate.add_argument("--block-size", type=int, default=128, help="tokens per row of text data")
    evaluate.add_argument("--task-args", nargs="*", default=[], metavar="KEY=VALUE", help=TASK_ARGS_HELP)
    evaluate.add_argument(
        "--text-files", nargs="+", help="score a text model on all of these UTF-8 text files instead of --task"
    )
    evaluate.add_argument(
        "--lengths", type=int, nargs="+", help="evaluate fresh rows at each of these lengths (accuracy vs length plot)"
    )
    evaluate.add_argument(
        "--output-dir", default="outputs/eval", help="where eval_<task>.json/.md (and .png with --lengths) go"
    )

    generate = add_verb("generate", help="continue a prompt with a saved model")
    generate.add_argument("model", help="folder written by save_pretrained / export")
    generate.add_argument("--prompt", required=True, help="text to continue")
    generate.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate")
    generate.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    generate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")

    bench = add_verb("bench", help="speed and memory side by side: architectures x backends vs an attention baseline")
    bench.add_argument(
        "--model-types",
        nargs="+",
        choices=model_types,
        default=model_types,
        metavar="MODEL_TYPE",
        help="architectures to compare",
    )
    bench.add_argument(
        "--backends", nargs="+", default=["auto"], help="kernel backends to compare, e.g. torch reference triton"
    )
    bench.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024], help="sequence lengths")
    bench.add_argument("--batch-size", type=int, default=4, help="rows per measured call")
    bench.add_argument(
        "--config", nargs="*", default=[], metavar="KEY=VALUE", help="width of every model, e.g. hidden_size=256"
    )
    bench.add_argument("--repeats", type=int, default=3, help="timed repeats per case (the median is reported)")
    bench.add_argument("--device", help="default: cuda when available, else cpu")
    bench.add_argument("--output-dir", default="outputs/bench", help="bench.json, bench.md and PNG plots go here")

    export = add_verb("export", help="write a Hub-ready folder (weights, remote code, model card) from a saved model")
    export.add_argument("model", help="folder written by save_pretrained")
    export.add_argument("output", help="folder to write")
    export.add_argument("--repo-id", help="Hub repository id shown in the model card")

    push = add_verb("push", help="export a saved model and upload it to the Hugging Face Hub")
    push.add_argument("model", help="folder written by save_pretrained")
    push.add_argument("repo_id", help="e.g. your-name/my-model")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", help="branch to upload to (created if missing)")
    push.add_argument("--message", help="commit message")
    push.add_argument("--dry-run", action="store_true", help="list what would be uploaded, contact nothing")
    for verb in (export, push):
        verb.add_argument("--license", default="apache-2.0", help="license id in the model card metadata")
        verb.add_argument("--results", help="JSON file: a list of {dataset, metric, value} for the model card")
    return parser


def _train(args, reload_check: bool) -> int:
    import hf_seqplugins

    from . import workflows
    from .plots import training_curve

    data, tokenizer = workflows.load_task(
        args.task, args.block_size, args.text_files, args.seed, workflows.parse_overrides(args.task_args)
    )
    task_name = "text files" if args.text_files else args.task
    print(f"{task_name}: {len(data['train'])} training and {len(data['test'])} held-out rows")
    model, trainer = workflows.train(
        args.model_type,
        data,
        tokenizer,
        args.output_dir,
        args.max_steps,
        args.batch_size,
        args.learning_rate,
        workflows.parse_overrides(args.config),
        getattr(args, "lora", False),
        getattr(args, "resume", False),
        args.seed,
    )
    results = workflows.evaluate(model, data["test"], tokenizer)
    classifier = workflows.is_classifier(model)
    print(f"held-out: {(workflows.classification_summary if classifier else workflows.perplexity_summary)(results)}")
    if tokenizer is not None:
        print(f"sample: {workflows.generate_text(model, tokenizer, 'The function ', 80, do_sample=False)!r}")
    export_dir = hf_seqplugins.export(
        model,
        Path(args.output_dir) / "model",
        tokenizer=tokenizer,
        results=_card_results(task_name, results),
        training=(
            f"{args.max_steps} steps of the transformers Trainer on {task_name} "
            f"(batch {args.batch_size}, lr {args.learning_rate})."
        ),
    )
    (export_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    curve = training_curve(
        trainer.state.log_history, Path(args.output_dir) / "training_curve.png", f"{args.model_type} on {task_name}"
    )
    print(f"exported to {export_dir} (weights, remote code, model card, results.json); training curve: {curve}")
    if reload_check and classifier:
        import torch

        reloaded = (
            AutoModelForSequenceClassification.from_pretrained(export_dir, trust_remote_code=True)
            .to(model.device)
            .eval()
        )
        rows = data["test"][:8]
        inputs = {
            name: torch.tensor(rows[name], device=model.device)
            for name in ("input_ids", "attention_mask")
            if name in rows
        }
        with torch.no_grad():
            same = torch.allclose(reloaded(**inputs).logits, model(**inputs).logits, atol=1e-5)
        print(f"reloaded with trust_remote_code: {'identical' if same else 'DIFFERENT'} logits")
        return 0 if same else 1
    if reload_check:
        reloaded = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True).eval()
        ids = AutoTokenizer.from_pretrained(export_dir)(
            "The function ", add_special_tokens=False, return_tensors="pt"
        ).input_ids
        same = (
            reloaded.generate(ids, max_new_tokens=40, do_sample=False)
            == model.generate(ids, max_new_tokens=40, do_sample=False)
        ).all()
        print(f"reloaded with trust_remote_code: {'identical' if same else 'DIFFERENT'} generations")
        return 0 if same else 1
    return 0


def _evaluate(args) -> int:
    from . import workflows
    from .plots import against_length
    from .results import write_results

    model = _load(args.model)
    task_kwargs = workflows.parse_overrides(args.task_args)
    if args.text_files:
        from .data import language_modeling_rows, text_blocks

        if args.lengths or task_kwargs:
            raise ValueError("--text-files scores whole files: it takes neither --lengths nor --task-args")
        tokenizer = _tokenizer(args.model)
        text = "\n\n".join(Path(f).read_text(encoding="utf-8") for f in args.text_files)
        blocks = text_blocks(tokenizer, text, args.block_size)
        if not blocks:
            raise ValueError(f"the text files hold fewer than --block-size={args.block_size} tokens")
        rows = [workflows.evaluate(model, language_modeling_rows(blocks), tokenizer)]
        args.task = Path(args.text_files[0]).stem if len(args.text_files) == 1 else "text_files"
    elif args.lengths:
        by_length = workflows.evaluate_lengths(model, args.task, args.lengths, **task_kwargs)
        rows = [{"length": length, **scores} for length, scores in by_length.items()]
    else:
        data, tokenizer = workflows.load_task(args.task, args.block_size, task_kwargs=task_kwargs)
        rows = [workflows.evaluate(model, data["test"], _tokenizer(args.model) if tokenizer is not None else None)]
    stem = Path(args.output_dir) / f"eval_{Path(args.task).name.replace('.', '_')}"
    written = write_results(rows, stem, f"{model.config.model_type} on {args.task}")
    if args.lengths:
        metric = "dfa_accuracy" if "dfa_accuracy" in rows[0] else "accuracy"
        points = {model.config.model_type: [(row["length"], row[metric]) for row in rows]}
        written.append(against_length(points, stem.with_suffix(".png"), metric, f"{args.task}: {metric} vs length"))
    print(json.dumps(rows if args.lengths else rows[0], indent=2))
    print("written:", ", ".join(str(p) for p in written))
    return 0


def console() -> int:
    """The `hf-seqplugins` command: `main`, with a user's mistake (a bad argument or value, a missing file, a
    backend that cannot run here) answered by one line on stderr instead of a traceback."""
    from ..core.backends import BackendUnavailableError

    try:
        return main()
    except (ValueError, KeyError, FileNotFoundError, BackendUnavailableError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    import hf_seqplugins

    args = _build_parser(sorted(hf_seqplugins.available_architectures())).parse_args(argv)
    if args.verb == "list":
        for model_type, info in sorted(hf_seqplugins.available_architectures().items()):
            print(f"{model_type} ({info.distribution}): {info.description}")
            for operator, names in info.backends.items():
                print(f"    {operator}: {', '.join(names)}")
        return 0
    if args.verb == "check":
        from .check import run

        return run(args.model_types, args.operators_only)
    if args.verb in ("train", "demo"):
        return _train(args, reload_check=args.verb == "demo")
    if args.verb == "evaluate":
        return _evaluate(args)
    if args.verb == "bench":
        import torch

        from . import bench
        from .workflows import parse_overrides

        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        rows = bench.compare(
            args.model_types,
            args.lengths,
            args.backends,
            parse_overrides(args.config),
            args.batch_size,
            repeats=args.repeats,
            device=args.device,
        )
        written = bench.write_report(rows, args.output_dir, args.device)
        print(Path(written[1]).read_text())
        print("written:", ", ".join(str(p) for p in written))
        return 0
    if args.verb == "generate":
        from .workflows import generate_text, is_classifier

        model = _load(args.model)
        if is_classifier(model):
            print(
                f"error: {args.model} holds a sequence classifier ({type(model).__name__}): it predicts one class per "
                "input and cannot generate text; use `hf-seqplugins evaluate` on it, or generate with a causal LM",
                file=sys.stderr,
            )
            return 1
        sampling = {"do_sample": True, "temperature": args.temperature} if args.sample else {"do_sample": False}
        print(generate_text(model, _tokenizer(args.model), args.prompt, args.max_new_tokens, **sampling))
        return 0
    model = _load(args.model)
    if args.verb == "export":
        folder = hf_seqplugins.export(
            model, args.output, repo_id=args.repo_id, tokenizer=_saved_tokenizer(args.model), **_card_fields(args)
        )
        print(f"exported {model.config.model_type} to {folder}")
        return 0
    try:
        result = hf_seqplugins.push_to_hub(
            model,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.message,
            dry_run=args.dry_run,
            tokenizer=_saved_tokenizer(args.model),
            **_card_fields(args),
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
