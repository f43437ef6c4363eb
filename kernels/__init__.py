"""Sequence operators, one folder each, with `reference`, `torch` and `triton` backends side by side."""
