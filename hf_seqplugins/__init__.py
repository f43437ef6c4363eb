"""hf-seqplugins: recurrent, state-space and linear-attention sequence models for transformers."""
