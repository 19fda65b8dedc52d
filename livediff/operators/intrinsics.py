"""LLVM operations for numba kernels that numba's own typing does not give.

numba widens integer arithmetic to 64 bits (``int32 + int32`` is an int64), which halves
the lanes of a vectorised loop.  The ``*32`` operations here stay in 32 bits and wrap
modulo 2**32, as LLVM's own instructions do: a kernel uses them where it has shown that
its sums fit (``spots.integer``, ``summary``) or wants the wrap.  Arguments of any integer
or bool type are truncated or extended to int32 first.

Cache prefetches: a kernel that alternates between streaming rows from memory and working
on rows in cache can fetch the next rows while it works (``spots.integer``, ``fused``).
"""
from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["add32", "and32", "ashr32", "low_byte", "mul32", "prefetch", "prefetch_span", "shl32", "sub32"]


def _int32_op(name: str):  # noqa: ANN202 - a numba intrinsic
    """An int32 binary operation of LLVM's (wrapping), callable from numba code."""

    def typer(typingctx, a, b):  # noqa: ANN001, ANN202, ARG001 - numba's intrinsic signature
        if not all(isinstance(t, (types.Integer, types.Boolean)) for t in (a, b)):
            return None

        def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
            x, y = (context.cast(builder, v, t, types.int32) for v, t in zip(args, sig.args))
            return getattr(builder, name)(x, y)

        return types.int32(a, b), codegen

    typer.__name__ = f"{name.rstrip('_')}32"
    return intrinsic(typer)


add32 = _int32_op("add")
sub32 = _int32_op("sub")
mul32 = _int32_op("mul")
and32 = _int32_op("and_")
shl32 = _int32_op("shl")
ashr32 = _int32_op("ashr")


@intrinsic
def low_byte(typingctx, word):  # noqa: ANN001, ANN202, ARG001
    """Index of the lowest nonzero byte of a nonzero uint64 (LLVM's count of trailing zeros / 8)."""
    if not isinstance(word, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202, ARG001
        zeros = builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))
        return builder.lshr(zeros, ir.Constant(zeros.type, 3))

    return types.int64(word), codegen


@intrinsic
def prefetch(typingctx, address):  # noqa: ANN001, ANN202, ARG001
    """A hint to bring the cache line at ``address`` (an integer) into the cache (LLVM's
    ``llvm.prefetch``: a read, kept in all levels); it never faults."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202, ARG001
        byte_ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.inttoptr(args[0], byte_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.none(address), codegen


@numba.njit(nogil=True, cache=True, inline="always")
def prefetch_span(row, c0, c1):  # noqa: ANN001, ANN201
    """:func:`prefetch` the cache lines of ``row[c0:c1]`` (``row`` a 1-D C-ordered array)."""
    base = row.ctypes.data
    for offset in range(c0 * row.itemsize, c1 * row.itemsize, 64):
        prefetch(base + offset)
