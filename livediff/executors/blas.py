"""One BLAS thread per livediff worker: livediff parallelises over frames, not inside a frame's kernels.

Some kernels multiply small dense matrices with numpy (the dynamic background's ``matrix``
low-pass).  OpenBLAS, which numpy and scipy ship, splits a product above roughly 64³
multiply-adds over its own pool of threads, one per core.  livediff already keeps every
core busy with its worker threads (or Dask worker processes), each on its own frame; BLAS
threads on top oversubscribe the cores: measured, a 240 x 240 low-pass on two workers of a
two-core machine took 2.4-3 ms per frame instead of 0.4 ms.  So wherever livediff runs its
own workers, :func:`single_threaded_blas` limits BLAS to one thread, process-wide (OpenBLAS
has one thread count per library, not one per calling thread) and for good: it is not
undone when an executor closes, since another (the service's, while a warm-up executor
comes and goes) may still run.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
_limited: object | None = None  # the threadpoolctl limiter, once applied


def single_threaded_blas() -> None:
    """Limit the BLAS libraries loaded in this process (numpy's and scipy's) to one thread each; idempotent."""
    global _limited
    with _lock:
        if _limited is not None:
            return
        import numpy  # noqa: F401  (the BLAS our kernels call; threadpoolctl limits loaded libraries only)
        import scipy.linalg  # noqa: F401  (scipy ships its own OpenBLAS)
        from threadpoolctl import threadpool_limits

        _limited = threadpool_limits(1, user_api="blas")
        log.debug("BLAS limited to one thread per call: livediff's workers parallelise over frames")
