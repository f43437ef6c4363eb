"""Fine-tune a saved model with LoRA (PEFT) using the transformers Trainer, merge the adapters and save.

    python examples/lora_finetune.py [--base outputs/demo/model] [--output-dir outputs/lora]

Without --base, a fresh small sLSTM (untrained) is fine-tuned, so the script runs alone.
The fine-tuning task is modular counting (parity), a state-tracking probe.
"""

import argparse

from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

import hf_seqplugins
from hf_seqplugins.app import tasks
from hf_seqplugins.app.data import byte_tokenizer
from hf_seqplugins.app.workflows import evaluate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--base", help="a folder written by save_pretrained / export (default: a fresh small sLSTM)")
parser.add_argument("--max-steps", type=int, default=150)
parser.add_argument("--output-dir", default="outputs/lora")
args = parser.parse_args()

tokenizer = byte_tokenizer()
if args.base:
    model = AutoModelForCausalLM.from_pretrained(args.base)
else:
    config = AutoConfig.for_model(
        "seqp_slstm", vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_heads=4
    )
    model = AutoModelForCausalLM.from_config(config)

# Parity over tokens 0/1 with the query token 2 and answers 3/4: ids the byte vocabulary already has.
train, test = (
    tasks.modular_counting(num_examples=1024, length=12),
    tasks.modular_counting(num_examples=128, length=12, seed=1),
)
print("before:", evaluate(model, test))

# LoRA adapters on every linear layer (the mixers' in/out projections and the feed-forwards).
lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
lora.print_trainable_parameters()
training_args = TrainingArguments(
    output_dir=f"{args.output_dir}/checkpoints",
    max_steps=args.max_steps,
    per_device_train_batch_size=32,
    learning_rate=5e-3,
    logging_steps=25,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
)
Trainer(model=lora, args=training_args, train_dataset=train).train()

merged = lora.merge_and_unload().eval()
print("after:", evaluate(merged, test))
hf_seqplugins.export(
    merged,
    f"{args.output_dir}/model",
    tokenizer=tokenizer,
    results=[
        {"dataset": "modular_counting", "metric": name, "value": value}
        for name, value in evaluate(merged, test).items()
    ],
)
print(f"merged model exported to {args.output_dir}/model")
