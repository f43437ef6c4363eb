"""Quickstart: train a small recurrent language model on text that ships with Python, evaluate it,
generate from it, export a Hub-ready folder and load it back the way a user without this package would.

    python examples/quickstart.py [--model-type seqp_lstm] [--max-steps 300] [--output-dir outputs/quickstart]

Runs in a few minutes on 2 CPU cores with no network. Tokens are UTF-8 bytes.
"""

import argparse
import math
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments, pipeline, set_seed

import hf_seqplugins
from hf_seqplugins.app.data import byte_tokenizer, language_modeling_dataset

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model-type", default="seqp_lstm", choices=sorted(hf_seqplugins.available_architectures()))
parser.add_argument("--max-steps", type=int, default=300)
parser.add_argument("--block-size", type=int, default=128)
parser.add_argument("--output-dir", default="outputs/quickstart")
args = parser.parse_args()
set_seed(0)
output_dir = Path(args.output_dir)

# 1. Data: Python's own documentation topics (real English) as bytes, in fixed-length blocks.
tokenizer = byte_tokenizer()
data = language_modeling_dataset(tokenizer, block_size=args.block_size)
print(f"corpus: {len(data['train'])} training and {len(data['test'])} held-out blocks of {args.block_size} bytes")

# 2. Model: any registered architecture, built through the Auto classes.
config = AutoConfig.for_model(
    args.model_type,
    vocab_size=len(tokenizer),
    hidden_size=128,
    num_hidden_layers=2,
    intermediate_size=256,
    num_heads=2,
    pad_token_id=tokenizer.pad_token_id,
    eos_token_id=tokenizer.eos_token_id,
)
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
    warmup_steps=min(20, args.max_steps // 10),
    logging_steps=25,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
)
trainer = Trainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["test"])
trainer.train()
bits_per_byte = trainer.evaluate()["eval_loss"] / math.log(2)
print(f"held-out text: {bits_per_byte:.3f} bits per byte")

# 4. Generate: the prompt is prefilled in one pass, then each byte costs O(1) from the recurrent cache.
model.eval()
prompt = tokenizer("The function ", return_tensors="pt").input_ids  # the byte tokenizer adds no EOS to a prompt
generated = model.generate(prompt, max_new_tokens=120, do_sample=False)
print(f"sample: {tokenizer.decode(generated[0])!r}")

# 5. Export a Hub-ready folder (weights, self-contained modeling code, tokenizer, model card) and load
#    it back through its remote code, as someone without hf-seqplugins installed would.
export_dir = hf_seqplugins.export(
    model,
    output_dir / "model",
    tokenizer=tokenizer,
    results=[{"dataset": "pydoc_data topics (held-out 5%)", "metric": "bits_per_byte", "value": bits_per_byte}],
    training=f"Byte-level language modelling with the transformers Trainer for {args.max_steps} steps "
    f"(batch 16 x {args.block_size} bytes, AdamW, lr 3e-3, cosine) on Python's pydoc_data topics.",
)
reloaded = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True).eval()
assert (reloaded.generate(prompt, max_new_tokens=120, do_sample=False) == generated).all(), (
    "reloaded model generates differently"
)
generator = pipeline("text-generation", model=str(export_dir), trust_remote_code=True)
piped = generator("The function ", max_new_tokens=40, do_sample=False)[0]["generated_text"]
assert piped == tokenizer.decode(reloaded.generate(prompt, max_new_tokens=40, do_sample=False)[0]), (
    "pipeline != generate"
)
print(f"pipeline on the export: {piped!r}")
print(f"exported to {export_dir} and reloaded with trust_remote_code: identical generations")
