"""The conformance kit, run over every registered architecture (built-in and third-party)."""

from hf_seqplugins.testing.conformance import *  # noqa: F401,F403
