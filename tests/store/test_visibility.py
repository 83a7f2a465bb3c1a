"""The visibility-lag probe against a real redis-server: exact lags, upper bounds, samples never visible."""

from __future__ import annotations

import time

from streaming.features.spec import DAY_NS, DEFAULT_SPEC
from streaming.features.state import CustomerState, TerminalState
from streaming.store.encoding import encode_state
from streaming.store.redis_store import StoreConfig, StoreWriter
from streaming.store.visibility import VisibilityProbe


def _states(ids):
    c, m = CustomerState(DEFAULT_SPEC, DAY_NS), TerminalState(DEFAULT_SPEC, DAY_NS)
    for i, tid in enumerate(ids):
        c.add(tid, (i + 1) * 10**9, 10.0)
        m.add_transaction(tid, (i + 1) * 10**9)
    return c, m


def test_lags_are_the_store_write_times_minus_the_publish_times(redis_server):
    config = StoreConfig.for_spec(redis_server.url, DEFAULT_SPEC, 7.0)
    writer = StoreWriter(config)
    c, m = _states(["old"])
    writer.write({config.customer_key("c1"): encode_state(c, written_at_ms=1_000_000),
                  config.terminal_key("t1"): encode_state(m, written_at_ms=1_000_000)})
    probe = VisibilityProbe(redis_server.url, DEFAULT_SPEC, 7.0, interval=0.005)
    for tid, terminal in (("new", "t1"), ("old", "t1"), ("never", "t-none"), ("unpublished", "t1")):
        probe.watch(tid, "c1", terminal)  # new: polled missing first; old: already visible (an upper bound)
    published = time.time()
    for tid in ("new", "old", "never"):  # "never": its terminal is never written; "unpublished" is not counted
        probe.published(tid, published)
    time.sleep(0.1)
    c, m = _states(["old", "new"])
    written_ms = int(published * 1e3) + 250
    writer.write({config.customer_key("c1"): encode_state(c, written_at_ms=written_ms - 40),
                  config.terminal_key("t1"): encode_state(m, written_at_ms=written_ms)})
    summary = probe.close(timeout=0.5)
    assert (summary.samples, summary.visible, summary.missing, summary.exact) == (3, 2, 1, 1)
    lags = sorted(summary.lags_ms)
    assert lags[0] == 1_000_000 - published * 1e3 < 0 and summary.before_output == 1
    assert abs(lags[1] - 250) < 1.0  # the later of the two writes made it visible
    assert summary.max_ms == lags[1]
