"""Evaluate a model with the shipped `evaluate` modules, plot accuracy against length, export and push it.

    python examples/evaluate_and_publish.py [--max-steps 300] [--repo-id you/regbench-gru] [--push]

The model is a small GRU trained on RegBench (in-context learning of random regular languages); the
metric is DFA accuracy: how often the greedy next symbol keeps the current string in the row's language.
Without --push, the upload is a dry run that lists the files and contacts nothing.
"""

import argparse

import torch

import hf_seqplugins
from hf_seqplugins.app import metrics, tasks, workflows
from hf_seqplugins.app.plots import against_length

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-steps", type=int, default=300)
parser.add_argument("--output-dir", default="outputs/regbench")
parser.add_argument("--repo-id", default="your-name/regbench-gru")
parser.add_argument("--push", action="store_true", help="really upload (needs `hf auth login`)")
args = parser.parse_args()

# Train: held-out rows come from DFAs never seen in training.
data = tasks.splits("regbench", num_train=1024, num_test=64, length=128)
model, _ = workflows.train(
    "seqp_gru", data, None, args.output_dir, max_steps=args.max_steps, overrides={"hidden_size": 64}
)

# Evaluate by hand with the evaluate modules: position t's argmax is the prediction of token t + 1.
test = data["test"]
with torch.no_grad():
    predictions = model(torch.tensor(test["input_ids"], device=model.device)).logits.argmax(-1).cpu()
dfa_accuracy = metrics.load("dfa_accuracy").compute(
    predictions=predictions.tolist(), references=test["input_ids"], dfa=test["dfa"]
)
print("DFA accuracy:", dfa_accuracy["dfa_accuracy"])
shifted_labels = torch.tensor(test["labels"])[:, 1:]
exact = metrics.load("recall_accuracy").compute(
    predictions=[row[:-1][keep].tolist() for row, keep in zip(predictions, shifted_labels != -100)],
    references=[row[keep].tolist() for row, keep in zip(shifted_labels, shifted_labels != -100)],
)
print("next-symbol exact match (the sampled walk is one valid answer of several):", exact["accuracy"])

# The same numbers at growing lengths (more strings in context), as a plot.
by_length = workflows.evaluate_lengths(model, "regbench", [32, 64, 128, 256], num_examples=32)
plot = against_length(
    {"seqp_gru": [(n, r["dfa_accuracy"]) for n, r in by_length.items()]},
    f"{args.output_dir}/dfa_accuracy_vs_length.png",
    "DFA accuracy",
    "RegBench: accuracy vs length",
)
print("plot:", plot)

# Export with the results in the model card's model-index, then push (a dry run unless --push).
results = [{"dataset": "regbench", "metric": "dfa_accuracy", "value": dfa_accuracy["dfa_accuracy"]}]
folder = hf_seqplugins.export(model, f"{args.output_dir}/model", repo_id=args.repo_id, results=results)
print("exported to", folder)
upload = hf_seqplugins.push_to_hub(model, args.repo_id, results=results, dry_run=not args.push)
for name, size in upload.files:
    print(f"{size:>10,}  {name}")
print("uploaded to", upload.url if args.push else "nowhere (dry run)")
