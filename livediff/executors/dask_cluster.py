"""The dask executor's view of the cluster: the client, the workers, and the chains (actors) on them.

:class:`Cluster` connects to a scheduler (or starts a ``LocalCluster``), follows the
scheduler's worker events (``add-worker``, ``remove-worker`` on its ``"all"`` topic),
keeps up to ``workers`` chains (:class:`Slot`, each a :class:`~.dask_actor.ChainActor`),
one per worker thread at most, on the workers with the fewest per thread (a cluster with
fewer threads runs fewer chains until workers join), starts each on the series before it
gets a frame, and makes the numbered calls a chain runs in order.  Calls go straight to the
worker (``direct_to_workers``), never through the scheduler.  What a lost chain means for
the frames it held is the executor's business: it is told through ``on_lost``.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ..model import Codec, SeriesStart
from ..pipeline import OperatorSpec
from .dask_actor import ChainActor

log = logging.getLogger(__name__)


class Slot:
    """One chain on a Dask worker, as the service sees it."""

    def __init__(self, address: str, future: Any, actor: Any) -> None:
        self.address = address
        self.future = future  # holding it keeps the actor alive
        self.actor = actor
        self.calls = 0  # calls numbered so far
        self.inflight = 0  # frame calls not yet returned
        self.sent = 0  # frames sent
        self.context: tuple[SeriesStart, bool] | None = None  # the (series, output) its chain was started on
        self.has: dict[str, int] = {}  # the version of each operator's series-wide state it holds
        self.state: dict[str, dict[str, Any]] | None = None  # its partial state as last pulled
        self.lost = False
        self.draining = False
        self.tasks: set[asyncio.Task] = set()


class Cluster:
    """The client side of a Dask cluster, holding up to ``workers`` chains.

    Parameters
    ----------
    scheduler : ``"local"`` or a scheduler address (``"tcp://host:8786"``).
    workers : chains to keep (and worker processes of the ``LocalCluster``).
    specs, decode, warm, fuse : what a chain is built from (:class:`~.dask_actor.ChainActor`).
    wait_s : how long to wait for a worker, a chain's creation, or a worker's return.
    on_ready : called with a chain once it runs the current series.
    on_lost : called with a chain and why, when its worker left or a call failed.
    """

    def __init__(self, scheduler: str, workers: int, specs: Sequence[OperatorSpec], decode: Codec, *,
                 warm: bool, fuse: bool, wait_s: float, on_ready: Callable[[Slot], None],
                 on_lost: Callable[[Slot, str], None]) -> None:
        self.scheduler = scheduler
        self.workers = workers
        self.slots: list[Slot] = []
        self.starting: list[str] = []  # workers chains are being created on
        self.context: tuple[SeriesStart, bool] | None = None  # (series, ship output frames) chains start on
        self._specs = list(specs)
        self._decode = decode
        self._warm = warm
        self._fuse = fuse
        self._wait = wait_s
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._hosts: dict[str, int] = {}  # worker address -> threads
        self._refused: set[str] = set()  # workers a chain could not be created on
        self._lost: dict[str, float] = {}  # worker address -> when a chain on it was lost
        self._client: Any = None
        self._local: Any = None
        self._tasks: set[asyncio.Task] = set()

    async def connect(self) -> None:
        """Connect (once), and wait for a first worker."""
        if self._client is not None:
            return
        from distributed import Client, LocalCluster

        if self.scheduler == "local":
            self._local = await LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                             dashboard_address=None, asynchronous=True)
        try:  # the default client: the actors' handles find their client through it
            self._client = await Client(self._local or self.scheduler, asynchronous=True, direct_to_workers=True,
                                        timeout=self._wait)
        except OSError as exc:
            raise ConnectionError(f"cannot reach the Dask scheduler at {self.scheduler}: {exc}") from None
        self._client.subscribe_topic("all", self._event)
        try:
            await self._client.wait_for_workers(self.workers if self._local else 1, timeout=self._wait)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no Dask worker joined the scheduler at {self.scheduler} within {self._wait:g} s "
                               f"(start some: dask worker {self.scheduler})") from None
        await self._refresh()
        log.info("Dask scheduler %s: %d workers, %d threads", self.scheduler, len(self._hosts),
                 sum(self._hosts.values()))

    async def ensure(self) -> None:
        """Create chains until there are ``workers`` of them or no worker is left to place one on."""
        while len(self.slots) + len(self.starting) < self.workers:
            address = self._place()
            if address is None:
                return
            self.starting.append(address)
            try:
                slot = await self._new_slot(address)
                while self.context is not None and slot.context is not self.context:
                    await self.start(slot, self.context)
            except Exception as exc:
                log.error("cannot run the chain on Dask worker %s: %s: %s", address, type(exc).__name__, exc)
                self._refused.add(address)
                continue
            finally:
                self.starting.remove(address)
            self.slots.append(slot)
            log.info("chain started on Dask worker %s (%d of %d)", address, len(self.slots), self.workers)
            self._on_ready(slot)

    async def start(self, slot: Slot, context: tuple[SeriesStart, bool]) -> None:
        """Start ``slot``'s chain on ``context`` = (series, whether to ship output frames back); it
        holds no version of series-wide state then.

        A lost worker is reported to ``on_lost``; a chain that cannot start on the series
        raises (the series cannot start, as with threads).
        """
        try:
            await self.call(slot, "start", *context, timeout=None)
        except asyncio.CancelledError:
            if slot.lost:
                return
            raise
        except Exception as exc:
            if is_loss(exc) and slot in self.slots:
                self._on_lost(slot, f"starting the series: {type(exc).__name__}: {exc}")
                return
            raise
        slot.context, slot.has, slot.state = context, {}, None

    def drop(self, slot: Slot) -> None:
        """``slot`` is lost: forget it, avoid its worker for a while (the scheduler may not know
        yet), and create another chain."""
        if slot in self.slots:
            self.slots.remove(slot)
        self._lost[slot.address] = time.monotonic()
        for task in list(slot.tasks):
            task.cancel()
        try:
            slot.future.release()
        except Exception as exc:  # the client may be closing: nothing is left to release then
            log.debug("releasing the chain on %s: %s", slot.address, exc)
        self._spawn(self.ensure())

    @staticmethod
    def call(slot: Slot, method: str, *args: Any, timeout: float | None) -> asyncio.Task:
        """Call ``method`` on ``slot``'s chain, numbered after every earlier call to it."""
        number, slot.calls = slot.calls, slot.calls + 1

        async def run() -> Any:
            return await asyncio.wait_for(_wait(slot.actor.call(number, method, *args)), timeout)

        task = asyncio.ensure_future(run())
        slot.tasks.add(task)
        task.add_done_callback(slot.tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for slot in self.slots:
            for task in list(slot.tasks):
                task.cancel()
        self.slots.clear()
        try:
            if self._client is not None:
                self._client.unsubscribe_topic("all")  # else the scheduler writes our goodbye to a closed comm
                await asyncio.wait_for(self._client.close(), 30)
            if self._local is not None:
                await asyncio.wait_for(self._local.close(), 30)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("closing the Dask client: %s: %s", type(exc).__name__, exc)
        finally:
            self._client = self._local = None

    # ------------------------------------------------------------------ workers
    async def _refresh(self) -> None:
        """Ask the scheduler which workers it has."""
        info = await self._client.scheduler.identity(n_workers=-1)
        self._hosts = {address: w.get("nthreads", 1) for address, w in info["workers"].items()}

    async def _joined(self) -> None:
        await self._refresh()
        await self.ensure()

    def _event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, msg = event
        action, address = msg.get("action"), msg.get("worker")
        if action == "remove-worker" and address is not None:
            self._hosts.pop(address, None)
            for slot in [s for s in self.slots if s.address == address]:
                self._on_lost(slot, "its worker left the cluster")
        elif action == "add-worker" and address is not None:
            self._spawn(self._joined())

    def _place(self) -> str | None:
        """The worker with the fewest chains per thread and a thread without one, or None when
        there is none (a chain more waits for a worker to join); workers that lost a chain in the
        last ``wait_s`` are avoided."""
        now = time.monotonic()
        count = Counter([s.address for s in self.slots] + self.starting)
        candidates = [(count[a] / n, a) for a, n in self._hosts.items()
                      if count[a] < n and a not in self._refused and now - self._lost.get(a, -math.inf) > self._wait]
        return min(candidates)[1] if candidates else None

    async def _new_slot(self, address: str) -> Slot:
        future = self._client.submit(ChainActor, self._specs, self._decode, self._warm, self._fuse, actor=True,
                                     workers=[address], allow_other_workers=False, pure=False)
        try:
            actor = await asyncio.wait_for(_wait(future), self._wait)
        except BaseException:
            future.release()
            raise
        return Slot(address, future, actor)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("dask executor: %s: %s", type(exc).__name__, exc, exc_info=exc)


def is_loss(exc: BaseException) -> bool:
    """Whether a call failed because its worker is gone or unreachable (not because the chain raised)."""
    return (isinstance(exc, (OSError, asyncio.TimeoutError))
            or (isinstance(exc, RuntimeError) and "Worker holding Actor was lost" in str(exc)))


async def _wait(awaitable: Any) -> Any:
    """Await a Dask future or an actor's call future (neither is an asyncio one)."""
    return await awaitable
