"""Test helper: a chunk sink seen as the plain function f(q0, q1, p, s) over every key."""

from __future__ import annotations


def wide_sink(fn):
    """A ChunkSink calling fn(q0, q1, p (B, H, c, Nk), s (B, H, c, Nk), −inf where masked) for each chunk."""
    return lambda chunk: fn(chunk.q0, chunk.q1, chunk.wide(chunk.p, 0.0), chunk.wide(chunk.scores, float("-inf")))
