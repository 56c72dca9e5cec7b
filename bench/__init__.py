"""The harness: the `bench` CLI, sweeps, process control, measurement, results and reports."""

import os

# numpy's OpenBLAS starts a worker thread per CPU at import. The harness pins itself to the
# client CPUs after its imports, and a thread keeps the affinity it was born with, so that
# thread would stay free to run on the server's CPUs. The harness does no linear algebra
# worth a second thread; a user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
