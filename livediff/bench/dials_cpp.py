"""DIALS' dispersion threshold as plain C++, built at bench time: the peer of our spot threshold.

The source below follows DIALS' ``DispersionThreshold`` (``dials/algorithms/image/
threshold/local.h``): one summed-area table of (count, sum, sum of squares) per pixel,
in double, over the valid pixels below 2**24, then per pixel the clipped 7 x 7 window
from four table corners and the test of ``spotfinding.md`` in double.  The table is
allocated once per image size (a DIALS threshold object keeps it between images).
Pixels at or below -2**24 would count here and not in livediff, and a valid pixel at or
above 2**24 may be strong here; the bench frames have neither.

:func:`load` compiles it with the system's C++ compiler (``c++``, ``g++`` or ``clang++``)
into a cache directory and opens it with ctypes; without a compiler it says why.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

SOURCE = r"""
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace {

struct Data {
  int m;
  double x;
  double y;
};

template <typename T>
void compute_sat(Data *table, const T *image, const bool *mask, std::size_t ysize, std::size_t xsize) {
  const double BIG = (1 << 24);
  for (std::size_t j = 0, k = 0; j < ysize; ++j) {
    int m = 0;
    double x = 0;
    double y = 0;
    for (std::size_t i = 0; i < xsize; ++i, ++k) {
      double v = image[k];
      int mm = (mask[k] && v < BIG) ? 1 : 0;
      m += mm;
      x += mm * v;
      y += mm * v * v;
      if (j == 0) {
        table[k].m = m;
        table[k].x = x;
        table[k].y = y;
      } else {
        table[k].m = table[k - xsize].m + m;
        table[k].x = table[k - xsize].x + x;
        table[k].y = table[k - xsize].y + y;
      }
    }
  }
}

template <typename T>
void compute_threshold(const Data *table, const T *src, const bool *mask, bool *dst, std::size_t ysize,
                       std::size_t xsize, int kysize, int kxsize, double nsig_b, double nsig_s, double threshold,
                       int min_count) {
  for (std::size_t j = 0, k = 0; j < ysize; ++j) {
    for (std::size_t i = 0; i < xsize; ++i, ++k) {
      int i0 = (int)i - kxsize - 1, i1 = (int)i + kxsize;
      int j0 = (int)j - kysize - 1, j1 = (int)j + kysize;
      i1 = i1 < (int)xsize ? i1 : (int)xsize - 1;
      j1 = j1 < (int)ysize ? j1 : (int)ysize - 1;
      int k0 = j0 * (int)xsize;
      int k1 = j1 * (int)xsize;
      double m = 0;
      double x = 0;
      double y = 0;
      if (i0 >= 0 && j0 >= 0) {
        const Data &d00 = table[k0 + i0];
        const Data &d10 = table[k1 + i0];
        const Data &d01 = table[k0 + i1];
        m += d00.m - (d10.m + d01.m);
        x += d00.x - (d10.x + d01.x);
        y += d00.y - (d10.y + d01.y);
      } else if (i0 >= 0) {
        const Data &d10 = table[k1 + i0];
        m -= d10.m;
        x -= d10.x;
        y -= d10.y;
      } else if (j0 >= 0) {
        const Data &d01 = table[k0 + i1];
        m -= d01.m;
        x -= d01.x;
        y -= d01.y;
      }
      const Data &d11 = table[k1 + i1];
      m += d11.m;
      x += d11.x;
      y += d11.y;
      dst[k] = false;
      double v = src[k];
      if (mask[k] && m >= min_count && x >= 0 && v > threshold) {
        double a = m * y - x * x - x * (m - 1);
        double b = m * v - x;
        double c = x * nsig_b * std::sqrt(2 * (m - 1));
        double d = nsig_s * std::sqrt(x * m);
        dst[k] = a > c && b > d;
      }
    }
  }
}

template <typename T>
void dispersion(const T *image, const bool *mask, bool *dst, void *table, std::size_t ysize, std::size_t xsize,
                int kysize, int kxsize, double nsig_b, double nsig_s, double threshold, int min_count) {
  Data *t = static_cast<Data *>(table);
  compute_sat(t, image, mask, ysize, xsize);
  compute_threshold(t, image, mask, dst, ysize, xsize, kysize, kxsize, nsig_b, nsig_s, threshold, min_count);
}

}  // namespace

#define DISPERSION(NAME, T)                                                                                      \
  extern "C" void NAME(const T *image, const bool *mask, bool *dst, void *table, std::size_t ysize,             \
                       std::size_t xsize, int kysize, int kxsize, double nsig_b, double nsig_s, double threshold, \
                       int min_count) {                                                                          \
    dispersion(image, mask, dst, table, ysize, xsize, kysize, kxsize, nsig_b, nsig_s, threshold, min_count);   \
  }

DISPERSION(dispersion_uint16, std::uint16_t)
DISPERSION(dispersion_int32, std::int32_t)
DISPERSION(dispersion_uint32, std::uint32_t)
DISPERSION(dispersion_float64, double)

extern "C" std::size_t table_entry_size() { return sizeof(Data); }
"""

#: the compiler's flags: DIALS' release builds optimise at -O3 for the build machine's generic target
FLAGS = ("-O3", "-shared", "-fPIC", "-std=c++11")

COMPILERS = ("c++", "g++", "clang++")

DTYPES = ("uint16", "int32", "uint32", "float64")


def compiler() -> str | None:
    """The first C++ compiler on PATH, or None."""
    return next((path for name in COMPILERS if (path := shutil.which(name))), None)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "livediff"


def load() -> tuple[ctypes.CDLL | None, str | None]:
    """Compile (once per source and compiler) and open the library: ``(library, None)``, or
    ``(None, why)`` when no compiler is found or the build fails."""
    cxx = compiler()
    if cxx is None:
        return None, f"no C++ compiler on PATH ({', '.join(COMPILERS)})"
    key = hashlib.sha256("\0".join((SOURCE, cxx, *FLAGS)).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"dials_dispersion_{key}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "dials_dispersion.cpp"
            src.write_text(SOURCE)
            built = Path(tmp) / lib.name
            proc = subprocess.run([cxx, *FLAGS, "-o", str(built), str(src)], capture_output=True, text=True,
                                  check=False)
            if proc.returncode:
                return None, f"{cxx} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1][:160]}"
            os.replace(built, lib)  # atomic: a concurrent bench sees the whole file or none
    return ctypes.CDLL(str(lib)), None


@lru_cache(maxsize=1)
def _table(size: int) -> np.ndarray:
    """The summed-area table's memory (24 bytes a pixel): kept for the next image of the same
    size, as DIALS keeps it, and only for one size at a time."""
    return np.empty(size, np.uint8)


def dispersion(library: ctypes.CDLL, shape: tuple[int, int], dtype: str, *, kernel_size: tuple[int, int] = (3, 3),
               sigma_background: float = 6.0, sigma_strong: float = 3.0, global_threshold: float = 0.0,
               min_local: int = 2) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A function ``(image, mask) -> strong`` running the C++ threshold on images of ``shape``
    and ``dtype`` (one of DTYPES)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    fn = getattr(library, f"dispersion_{dtype}")
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                   ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_double,
                   ctypes.c_int]
    library.table_entry_size.restype = ctypes.c_size_t
    rows, cols = shape
    kh, kw = kernel_size

    def run(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(image, dtype=dtype)
        mask = np.ascontiguousarray(mask, dtype=bool)
        if image.shape != shape or mask.shape != shape:
            raise ValueError(f"image shape {image.shape} and mask shape {mask.shape} must be {shape}")
        out = np.empty(shape, bool)
        table = _table(rows * cols * library.table_entry_size())
        fn(image.ctypes.data, mask.ctypes.data, out.ctypes.data, table.ctypes.data, rows, cols, kh, kw,
           sigma_background, sigma_strong, global_threshold, min_local)
        return out

    return run
