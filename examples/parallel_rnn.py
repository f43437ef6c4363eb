"""Train a nonlinear RNN in parallel over the sequence (ParaRNN's Newton iterations), generate from it one step per
token, and plug in a cell of your own by writing only its step.

    python examples/parallel_rnn.py [--cell gru] [--max-steps 200] [--output-dir outputs/parallel_rnn]

Runs in a few minutes on 2 CPU cores with no network.
"""

import argparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

from hf_seqplugins.app.data import byte_tokenizer, language_modeling_dataset
from hf_seqplugins.kernels.linear_scan.newton import NewtonStatsCallback, newton_scan, sequential_scan
from hf_seqplugins.plugins.pararnn import ParaCell, register_cell


class TanhCell(ParaCell):
    """h' = tanh(A h + x): one input row per channel. Only the step: the engine takes the Jacobian from autograd."""

    input_rows = 1

    def step(self, h, x):
        return torch.tanh(self.A[0] * h + x[..., 0, :])


register_cell("tanh", TanhCell)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cell", default="gru", choices=["gru", "lstm_cifg", "slstm_diag", "tanh"])
parser.add_argument("--max-steps", type=int, default=200)
parser.add_argument("--output-dir", default="outputs/parallel_rnn")
args = parser.parse_args()
set_seed(0)

# 1. The engine alone: Newton iterations whose linear solves are parallel scans give the sequential loop's states.
cell = TanhCell(8)
cell.init_cell_weights()
x, h0 = torch.randn(2, 512, 1, 8), torch.zeros(2, 8)
with torch.no_grad():
    parallel, stats = newton_scan(cell.step, x, h0)
    loop = sequential_scan(cell.step, x, h0)
print(
    f"engine: {stats.iterations} Newton iterations, residual {stats.residual:.1e}, "
    f"max difference to the loop {(parallel - loop).abs().max().item():.1e}"
)

# 2. A language model of such cells, trained with the unmodified Trainer; the callback logs Newton's work.
tokenizer = byte_tokenizer()
data = language_modeling_dataset(tokenizer, block_size=128)
config = AutoConfig.for_model(
    "seqp_pararnn",
    cell=args.cell,
    vocab_size=len(tokenizer),
    hidden_size=128,
    num_hidden_layers=2,
    intermediate_size=256,
    pad_token_id=tokenizer.pad_token_id,
    eos_token_id=tokenizer.eos_token_id,
)
model = AutoModelForCausalLM.from_config(config)
training_args = TrainingArguments(
    output_dir=args.output_dir,
    max_steps=args.max_steps,
    per_device_train_batch_size=16,
    learning_rate=3e-3,
    logging_steps=max(1, args.max_steps // 4),
    save_strategy="no",
    report_to=[],
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=training_args, train_dataset=data["train"])
trainer.callback_handler.callbacks.insert(0, NewtonStatsCallback())
trainer.train()
last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
print(
    f"{args.cell}: loss {last['loss']:.3f}, at most {last['newton_iterations']} Newton iterations per solve, "
    f"residual {last['newton_residual']:.1e}, {last['newton_fallbacks']} fallbacks to the loop"
)

# 3. Generation steps the cell: O(1) per token from the state in the cache.
prompt = tokenizer("The ", add_special_tokens=False, return_tensors="pt").input_ids
output = model.eval().generate(prompt, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id)
print("generated:", repr(tokenizer.decode(output[0], skip_special_tokens=True)))
