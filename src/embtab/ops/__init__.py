"""Backends: the reference semantics, torch's kernels, Triton kernels; one dispatch point."""
