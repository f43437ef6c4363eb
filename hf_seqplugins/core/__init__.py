"""The framework: configuration and modeling base classes, the recurrent cache, plugin registry and kernel backends.

It imports neither publishing (`hf_seqplugins.export`) nor the application (`hf_seqplugins.app`).
"""
