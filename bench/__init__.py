"""Benchmarks: each script prints JSON; `attnscope bench` runs them. Results live in bench/results/."""
