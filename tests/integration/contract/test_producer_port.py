"""`popsync.runtime.ports.Producer`: once `send_all` returns, every message is on its topic
with its key, value and headers, each key's messages in the order sent. Run against
`tests.fakes.RecordingProducer` and `popsync.adapters.kafka.producer.BatchProducer`."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from popsync.runtime.messages import OutboundMessage
from tests.fakes import ProducerUnderTest

pytestmark = pytest.mark.integration


def test_an_empty_batch_sends_nothing(producer: ProducerUnderTest) -> None:
    first, second = producer.topics
    asyncio.run(producer.producer.send_all([]))
    assert producer.delivered(first) == []
    assert producer.delivered(second) == []


def test_every_message_lands_with_its_key_value_and_headers(producer: ProducerUnderTest) -> None:
    topic, _ = producer.topics
    messages = [
        OutboundMessage(topic, b"079203000123", b"\x00binary\xff value"),
        OutboundMessage(
            topic,
            b"001185000102",
            b"with headers",
            [("reason", "SCHEMA_UNKNOWN"), ("offset", b"\x00\x01"), ("vietnamese", "Hưng")],
        ),
        OutboundMessage(topic, b"001185000102", b"", [("same", b"1"), ("same", b"2")]),
    ]
    asyncio.run(producer.producer.send_all(messages))
    assert Counter(producer.delivered(topic)) == Counter(producer.expected(messages, topic))


def test_a_message_may_have_no_key_no_value_or_a_header_without_value(
    producer: ProducerUnderTest,
) -> None:
    topic, _ = producer.topics
    messages = [
        OutboundMessage(topic, None, b"no key"),
        OutboundMessage(topic, b"tombstone", None),
        OutboundMessage(topic, b"k", b"v", [("empty", None)]),
    ]
    asyncio.run(producer.producer.send_all(messages))
    assert Counter(producer.delivered(topic)) == Counter(producer.expected(messages, topic))


def test_each_key_keeps_the_order_it_was_sent_in_across_calls(producer: ProducerUnderTest) -> None:
    topic, _ = producer.topics
    keys = [f"0792030{n:05d}".encode() for n in range(5)]
    first = [OutboundMessage(topic, keys[i % 5], f"{i}".encode()) for i in range(50)]
    then = [OutboundMessage(topic, keys[i % 5], f"{i}".encode()) for i in range(50, 80)]

    async def send() -> None:
        await producer.producer.send_all(first)
        await producer.producer.send_all(then)

    asyncio.run(send())
    delivered = producer.delivered(topic)
    for key in keys:
        sent = [m.value for m in first + then if m.key == key]
        assert [d.value for d in delivered if d.key == key] == sent
    assert len(delivered) == 80


def test_one_batch_may_go_to_several_topics(producer: ProducerUnderTest) -> None:
    first, second = producer.topics
    messages = [
        OutboundMessage(first if i % 3 else second, b"same key", f"{i}".encode()) for i in range(12)
    ]
    asyncio.run(producer.producer.send_all(messages))
    for topic in (first, second):
        assert producer.delivered(topic) == producer.expected(messages, topic)


def test_what_was_sent_stays_delivered_after_close(producer: ProducerUnderTest) -> None:
    topic, _ = producer.topics
    messages = [OutboundMessage(topic, b"k", b"before close")]
    asyncio.run(producer.producer.send_all(messages))
    producer.producer.close()
    assert producer.delivered(topic) == producer.expected(messages, topic)
