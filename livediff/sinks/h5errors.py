"""Write errors in an HDF5 file: one line for the log, and closing the file without a crash.

libhdf5 cannot close a file whose writes fail (a full disk, a file size limit, an I/O
error).  H5Fclose flushes; the flush fails; the close returns an error having freed part
of the file's objects while their identifiers stay valid.  The next close of any of them
(h5py's own ``File.close`` closes every object first, and every h5py object closes its
identifier when it is freed, at the latest at interpreter exit) uses freed memory: the
process dies of a segmentation fault.  H5Fflush, unlike H5Fclose, may be retried: a flush
that failed for want of space succeeds once there is room again.

:func:`close_abandoned` closes such a file for good: it points the file's descriptor at
an anonymous memory file first, so that the close, with the flush it cannot skip,
succeeds and writes its last bytes nowhere.
"""
from __future__ import annotations

import contextlib
import os
import re
import resource
import tempfile
from collections.abc import Iterator

import h5py


def describe(exc: BaseException) -> str:
    """One line for a write error: libhdf5's "error message" (the OS's) when it gives one."""
    text = str(exc)
    found = re.search(r"error message = '([^']*)'", text)
    return f"{type(exc).__name__}: {found.group(1) if found else text.partition(chr(10))[0]}"


def close_abandoned(file: h5py.File) -> None:
    """Close ``file`` (sec2 driver) without another write reaching its disk.

    The file on disk keeps what flushes before wrote; a file opened in SWMR mode stays
    marked open for writing, like a killed writer's, and opens with ``swmr=True`` (or after
    ``h5clear -s``).  Raises what h5py's close raises: then the file must never be closed
    again.
    """
    with _no_file_size_limit():  # the memory file is a regular file: a size limit applies to it too
        scratch = _scratch_fd()
        os.dup2(scratch, file.id.get_vfd_handle())
        os.close(scratch)
        file.close()


@contextlib.contextmanager
def _no_file_size_limit() -> Iterator[None]:
    """Lift the process's soft file size limit (RLIMIT_FSIZE) to its hard limit for a while."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    try:
        yield
    finally:
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _scratch_fd() -> int:
    """A descriptor of an anonymous file, in memory where the OS allows."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("livediff-abandoned")
    fd, name = tempfile.mkstemp(prefix="livediff-abandoned-")
    os.unlink(name)
    return fd
