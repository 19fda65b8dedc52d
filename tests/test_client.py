"""The subscriber client: decodes and checks, skips and counts bad messages (or raises), times out, filters."""
from __future__ import annotations

import msgpack
import pytest
import zmq
import zmq.asyncio

from livediff import schema
from livediff.client import AsyncSubscriber, Subscriber

END = schema.series_end(series=1, reason="end", expected=2, received=2, bad=0, duplicates=0, stray=0, lost=0,
                        processed=2, failed=0, dropped=0, not_saved=0, file=None, map_holes=None,
                        resent=0, epoch=0)
BAD = [b"series", msgpack.packb({"v": schema.VERSION, "type": "end", "series": 1, "reason": "end"})]  # no counts
PING = [b"ping", msgpack.packb({"v": schema.VERSION, "type": "ping"})]  # a topic this schema does not know


@pytest.fixture
def pub():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    yield sock
    sock.close()
    ctx.term()


def _connected(pub: zmq.Socket, sub: Subscriber) -> None:
    """Publish pings until ``sub`` receives one; then drain the pings still in flight."""
    while sub.recv(0.02) is None:
        pub.send_multipart(PING)
    pub.send_multipart([b"ping", msgpack.packb({"v": schema.VERSION, "type": "last"})])
    while sub.recv(5)[1]["type"] != "last":
        pass


def test_bad_messages_are_skipped_and_counted(pub, caplog):
    with Subscriber(pub.getsockopt_string(zmq.LAST_ENDPOINT)) as sub:
        _connected(pub, sub)
        received = sub.received
        pub.send_multipart(BAD)
        pub.send_multipart(schema.encode("series", "end", END))
        topic, msg = sub.recv(5)
        assert topic == "series" and msg["processed"] == 2
        assert sub.bad == 1 and sub.received == received + 1
        assert "series/end message lacks expected, received" in caplog.text
        assert sub.recv(0.05) is None


def test_strict_subscriber_raises(pub):
    with Subscriber(pub.getsockopt_string(zmq.LAST_ENDPOINT), strict=True) as sub:
        _connected(pub, sub)
        pub.send_multipart(BAD)
        with pytest.raises(schema.SchemaError, match="series/end message lacks expected"):
            sub.recv(5)
        assert sub.bad == 1


def test_topics_filter_and_iteration_ends_when_idle(pub):
    with Subscriber(pub.getsockopt_string(zmq.LAST_ENDPOINT), ["ping", "series"], idle_timeout=0.2) as sub:
        _connected(pub, sub)
        pub.send_multipart(schema.encode("status", "heartbeat", {}))  # not subscribed: never seen, never counted
        for _ in range(3):
            pub.send_multipart(schema.encode("series", "end", END))
        assert [topic for topic, _ in sub] == ["series"] * 3
        assert sub.bad == 0


async def test_async_subscriber_shares_the_decoding(pub):
    ctx = zmq.asyncio.Context()
    try:
        async with AsyncSubscriber(pub.getsockopt_string(zmq.LAST_ENDPOINT), context=ctx, idle_timeout=0.2) as sub:
            while await sub.recv(0.02) is None:
                pub.send_multipart(schema.encode("series", "end", END))
            pub.send_multipart(BAD)
            pub.send_multipart(PING)
            topics = [topic async for topic, _ in sub]
            assert topics[-1] == "ping" and set(topics[:-1]) <= {"series"} and sub.bad == 1
    finally:
        ctx.term()
