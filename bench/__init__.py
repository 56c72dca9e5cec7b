"""The harness: the `bench` CLI, sweeps, process control, measurement, results and reports."""
