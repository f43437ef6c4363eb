"""minGRU as an hf-seqplugins plugin (see README.md)."""
