"""Attention under a variant: the variant catalogue, the PyTorch reference path and dispatch.

Nothing here knows about models: inputs are q, k, v tensors and a `TokenContext`.
"""
