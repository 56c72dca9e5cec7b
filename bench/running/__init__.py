"""Running one point: the server under test, the load engines and their workers, preflight checks,
child processes and their pipes, CPU pinning; also `bench serve` and `--target`.
"""
