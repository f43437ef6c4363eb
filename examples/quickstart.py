"""Quickstart: train a small recurrent language model on text that ships with Python, evaluate it,
generate from it, save a Hub-ready folder and load it back through the Auto classes.

    python examples/quickstart.py [--model-type seqp_lstm] [--max-steps 300] [--output-dir outputs/quickstart]

Runs in a few minutes on 2 CPU cores with no network. Tokens are raw UTF-8 bytes (vocabulary 256).
"""
import argparse
import math
from pathlib import Path

import pydoc_data.topics
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

import hf_seqplugins

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model-type", default="seqp_lstm", choices=sorted(hf_seqplugins.available_architectures()))
parser.add_argument("--max-steps", type=int, default=300)
parser.add_argument("--block-size", type=int, default=128)
parser.add_argument("--output-dir", default="outputs/quickstart")
args = parser.parse_args()
set_seed(0)
output_dir = Path(args.output_dir)

# 1. Data: Python's own documentation topics (real English), as bytes, in fixed-length blocks.
text = "\n\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
blocks = data[: len(data) // args.block_size * args.block_size].view(-1, args.block_size)
split = int(0.95 * len(blocks))
train = Dataset.from_dict({"input_ids": blocks[:split].tolist(), "labels": blocks[:split].tolist()})
evaluation = Dataset.from_dict({"input_ids": blocks[split:].tolist(), "labels": blocks[split:].tolist()})
print(f"corpus: {len(data):,} bytes -> {len(train)} training and {len(evaluation)} evaluation blocks of {args.block_size}")

# 2. Model: any registered architecture, built through the Auto classes.
config = AutoConfig.for_model(args.model_type, vocab_size=256, hidden_size=128, num_hidden_layers=2, intermediate_size=256, num_heads=2)
model = AutoModelForCausalLM.from_config(config)
print(f"{args.model_type}: {model.num_parameters():,} parameters, kernel backend {config.kernel_backend!r}")

# 3. Train and evaluate with the unmodified transformers Trainer.
training_args = TrainingArguments(
    output_dir=str(output_dir / "checkpoints"),
    max_steps=args.max_steps,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=32,
    learning_rate=3e-3,
    lr_scheduler_type="cosine",
    warmup_steps=20,
    logging_steps=25,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
)
trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation)
trainer.train()
metrics = trainer.evaluate()
bits_per_byte = metrics["eval_loss"] / math.log(2)
print(f"evaluation: loss {metrics['eval_loss']:.3f} nats/byte = {bits_per_byte:.3f} bits per byte")

# 4. Generate: the prompt is prefilled in one pass, then each byte costs O(1) from the recurrent cache.
model.eval()
prompt = torch.tensor([list(b"The function ")])
generated = model.generate(prompt, max_new_tokens=120, do_sample=False)
sample = bytes(generated[0].tolist()).decode("utf-8", errors="replace")
print(f"sample: {sample!r}")

# 5. Export a Hub-ready folder (config, safetensors weights, self-contained modeling code, model card)
#    and load it back through the remote code, as someone without hf-seqplugins installed would.
export_dir = hf_seqplugins.export(
    model,
    output_dir / "model",
    repo_id=f"<your-name>/{args.model_type}-pydoc-bytes",
    results=[{"dataset": "pydoc_data topics (held-out 5%)", "metric": "bits_per_byte", "value": bits_per_byte}],
    training=f"Byte-level language modelling with the transformers Trainer for {args.max_steps} steps "
    f"(batch 16 x {args.block_size} bytes, AdamW, lr 3e-3, cosine) on Python's pydoc_data topics.",
)
reloaded = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True).eval()
assert torch.equal(reloaded.generate(prompt, max_new_tokens=120, do_sample=False), generated), "reloaded model generates differently"
print(f"exported to {export_dir} and reloaded with trust_remote_code: identical generations")
