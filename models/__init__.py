"""Models: registry and loaders, per-call attention injection, `Trace` and its file format."""
