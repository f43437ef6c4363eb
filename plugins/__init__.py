"""Built-in architectures, one folder each, registered through the `hf_seqplugins` entry points."""
