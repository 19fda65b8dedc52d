"""Keep the frames a writer streams to disk out of the page cache.

A detector writes gigabytes a minute, and the service never reads them back.  Left in the
page cache, those pages crowd out everything else, and once memory is full every new page
must first be reclaimed; on a virtual machine whose host takes freed guest memory back,
each new page is also a fresh page from the host.  Measured on the 2-core development VM:
appending 1.8 MB chunks cost 0.35 ms of kernel time each while memory was fresh, then
4.5 ms each (0.4 GB/s) once the file's pages had used it up; releasing them every 16
chunks kept it at 0.46 ms.

:class:`WrittenPages` asks the kernel (``posix_fadvise(POSIX_FADV_DONTNEED)`` on the whole
file) every :data:`RELEASE_BYTES` written: that starts the writeback of the dirty pages and
drops those already on disk, so a file keeps about one interval in the cache.  Where
``posix_fadvise`` is missing (macOS, Windows), or the file is not a plain POSIX file, it
does nothing.
"""
from __future__ import annotations

import os

import h5py

__all__ = ["RELEASE_BYTES", "WrittenPages"]

#: bytes written between two releases
RELEASE_BYTES = 32 << 20


class WrittenPages:
    """Release a file's written pages from the page cache every ``every`` bytes (module docstring).

    Parameters
    ----------
    file : an HDF5 file open for writing (its POSIX driver's descriptor is used).
    every : bytes written between two releases.
    """

    def __init__(self, file: h5py.File, every: int = RELEASE_BYTES) -> None:
        posix = file.driver == "sec2" and hasattr(os, "posix_fadvise")
        self._fd: int | None = file.id.get_vfd_handle() if posix else None
        self._every = every
        self._written = 0

    def add(self, nbytes: int) -> None:
        """Count ``nbytes`` more written; release the file's pages once ``every`` have been."""
        self._written += nbytes
        if self._fd is None or self._written < self._every:
            return
        self._written = 0
        try:
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:  # advice only: a file system that refuses it keeps its pages
            self._fd = None
