"""The Redis writer and reader against a real redis-server: ordering by compare-and-set, TTL, outages."""

from __future__ import annotations

import pytest

from streaming.features.spec import DAY_NS, DEFAULT_SPEC, EXTENDED_SPEC
from streaming.features.state import CustomerState
from streaming.store.encoding import encode_state, version_of
from streaming.store.redis_store import (StoreConfig, StoreReader, StoreUnavailableError, StoreWriter, check_url,
                                         redact, ttl_ms)


def _config(server, **kw):
    return StoreConfig.for_spec(server.url, DEFAULT_SPEC, 7.0, **kw)


def _states(n):
    """Successive states of one customer, one transaction more each."""
    s, out = CustomerState(DEFAULT_SPEC, DAY_NS), []
    for i in range(n):
        s.add(f"tx{i}", (i + 1) * 3_600 * 10**9, 10.0 + i)
        out.append(encode_state(s, written_at_ms=i))
    return out


def test_newer_state_wins_whatever_the_write_order(redis_server):
    config = _config(redis_server)
    writer, reader = StoreWriter(config), StoreReader(config, DEFAULT_SPEC)
    values = _states(5)
    key = config.customer_key("c1")
    writer.write({key: values[3]})
    for old in (values[0], values[2], values[3]):  # stale, stale, retried (equal)
        writer.write({key: old})
    assert writer.take_stats().stale == 3
    customer, terminal = reader.fetch("c1", "t-unknown")
    assert terminal is None
    assert customer.version == version_of(values[3]) and len(customer.state) == 4
    writer.write({key: values[4]})
    assert len(reader.fetch("c1", "x")[0].state) == 5


def test_keys_expire_after_the_ttl(redis_server):
    config = _config(redis_server)
    StoreWriter(config).write({config.customer_key("c1"): _states(1)[0]})
    ttl = config.client().pttl(config.customer_key("c1"))
    assert 0 < ttl <= config.ttl_ms == ttl_ms(DEFAULT_SPEC, 7.0) == (30 + 7 + 7) * 86_400_000


def test_redis_down_then_back_loses_nothing(redis_server):
    config = _config(redis_server, socket_timeout=0.2)
    writer = StoreWriter(config, min_backoff=0.02, max_backoff=0.1)
    values = _states(3)
    key = config.customer_key("c1")
    writer.write({key: values[0]})
    redis_server.stop()
    writer.write({key: values[1]})  # fails: kept for the retrier
    writer.write({key: values[2], config.customer_key("c2"): values[0]})
    stats = writer.take_stats()
    assert stats.failures >= 1 and stats.waiting == 2
    reader = StoreReader(config, DEFAULT_SPEC)
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        reader.fetch("c1", "t1")
    redis_server.start()  # empty again: no persistence
    assert writer.flush(10.0)
    assert reader.fetch("c1", "t1")[0].version == version_of(values[2])
    assert reader.fetch("c2", "t1")[0].version == version_of(values[0])
    assert writer.take_stats().waiting == 0


def test_reader_refuses_another_spec(redis_server):
    with pytest.raises(ValueError, match="feature spec"):
        StoreReader(_config(redis_server), EXTENDED_SPEC)


@pytest.mark.parametrize("url, message", [
    ("http://x:1/0", "must start with"), ("redis://:1/0", "must name a host"),
    ("redis://h:port/0", "invalid port"), ("redis://h:1/zero", "must be a number"), ("", "must be a URL")])
def test_bad_urls_are_named(url, message):
    with pytest.raises(ValueError, match=message):
        check_url(url)


def test_password_is_redacted():
    assert redact("rediss://:s3cret@h:6380/0") == "rediss://:***@h:6380/0"
    assert check_url("rediss://:s3cret@h:6380/0")
