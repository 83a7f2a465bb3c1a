"""The per-key feature code: hand-computed cases, and incremental state == vectorised (Hypothesis)."""

import doctest
import pickle
import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.features import windows
from streaming.features.spec import DEFAULT_SPEC, FeatureSpec
from streaming.features.windows import DAY_NS, LateEventError, customer_features, terminal_features, time_features
from streaming.features.state import CustomerState, TerminalState

HOUR = 3_600 * 10**9
T0 = pd.Timestamp("2018-04-02 00:00:00").value  # a Monday, 00:00 UTC


def ns(text: str) -> int:
    return pd.Timestamp(text).value


def col(features, name):
    return features[name].tolist()


# --- time features ------------------------------------------------------------------------

@pytest.mark.parametrize("when, weekend, night", [
    ("2018-04-06 23:59:59", 0, 0),  # Friday, last second
    ("2018-04-07 00:00:00", 1, 1),  # Saturday starts (and it is night)
    ("2018-04-07 06:59:59", 1, 1),  # last night second
    ("2018-04-07 07:00:00", 1, 0),  # day
    ("2018-04-08 23:59:59", 1, 0),  # Sunday, last second
    ("2018-04-09 00:00:00", 0, 1),  # Monday
    ("1969-12-27 03:00:00", 1, 1),  # before the epoch: a Saturday night
    ("1969-12-29 12:00:00", 0, 0),  # before the epoch: a Monday noon
])
def test_time_features_boundaries(when, weekend, night):
    f = time_features(np.array([ns(when)], dtype=np.int64))
    assert f["TX_DURING_WEEKEND"].tolist() == [weekend]
    assert f["TX_DURING_NIGHT"].tolist() == [night]
    assert f["TX_DURING_WEEKEND"].dtype == np.float64


@given(st.lists(st.integers(min_value=-(10**18), max_value=4 * 10**18), min_size=1, max_size=50))
def test_time_features_agree_with_pandas_calendar(times):
    t = np.array(times, dtype=np.int64)
    stamps = pd.DatetimeIndex(t.view("datetime64[ns]"))
    f = time_features(t)
    assert f["TX_DURING_WEEKEND"].tolist() == (stamps.dayofweek >= 5).astype(float).tolist()
    assert f["TX_DURING_NIGHT"].tolist() == (stamps.hour <= 6).astype(float).tolist()


def test_time_features_accept_datetime64():
    t = np.array(["2018-04-07T05:00:00"], dtype="datetime64[s]")
    assert time_features(t)["TX_DURING_NIGHT"].tolist() == [1.0]


# --- customer features, vectorised ------------------------------------------------------------

def test_customer_window_excludes_exactly_t_minus_n_days_and_includes_the_current_one():
    times = np.array([T0, T0 + 12 * HOUR, T0 + DAY_NS, T0 + DAY_NS + 1, T0 + 8 * DAY_NS], dtype=np.int64)
    amounts = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    f = customer_features(times, amounts)
    assert col(f, "CUSTOMER_ID_NB_TX_1DAY_WINDOW") == [1, 2, 2, 3, 1]  # T0 is out of (T0, T0+1d]
    assert col(f, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW") == [10, 15, 25, 30, 50]
    assert col(f, "CUSTOMER_ID_NB_TX_7DAY_WINDOW") == [1, 2, 3, 4, 2]  # at T0+8d: (T0+1d, T0+8d]
    assert col(f, "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW") == [10, 15, 20, 25, 45]
    assert col(f, "CUSTOMER_ID_NB_TX_30DAY_WINDOW") == [1, 2, 3, 4, 5]
    assert all(v.dtype == np.float64 for v in f.values())
    assert tuple(f) == DEFAULT_SPEC.customer_names


def test_same_time_transactions_are_in_each_others_window():
    times = np.array([T0, T0 + HOUR, T0 + HOUR], dtype=np.int64)
    f = customer_features(times, np.array([1.0, 2.0, 4.0]))
    assert col(f, "CUSTOMER_ID_NB_TX_1DAY_WINDOW") == [1, 3, 3]
    assert col(f, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW") == [1.0, 7 / 3, 7 / 3]


def test_average_is_the_exact_mean_of_cents():
    f = customer_features(np.array([T0, T0 + 1], dtype=np.int64), np.array([0.1, 0.2]))
    assert (0.1 + 0.2) / 2 != 0.15  # naive float sum
    assert col(f, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW") == [0.1, 0.15]
    # one-ulp noise around a cent (as in the reference data) rounds to that cent
    assert windows.amount_cents(np.array([85.64999999999999, 0.0, 2628.0])).tolist() == [8565, 0, 262800]


def test_empty_key_gives_empty_columns():
    f = customer_features(np.array([], dtype=np.int64), np.array([]))
    assert all(len(v) == 0 for v in f.values())
    g = terminal_features(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert all(len(v) == 0 for v in g.values())


@pytest.mark.parametrize("times, amounts, message", [
    ([2, 1], [1.0, 1.0], "sorted in ascending event time"),
    ([1, 2], [1.0, float("nan")], "finite"),
    ([1, 2], [1.0, float("inf")], "finite"),
    ([1, 2], [1.0, 1e12], r"\|amount\| <= 1e\+11"),
    ([1, 2], [1.0], "one value per time"),
    ([[1, 2]], [[1.0, 1.0]], "1-d array"),
    ([1.5, 2.5], [1.0, 1.0], "int64 nanoseconds"),
])
def test_customer_features_reject_bad_input(times, amounts, message):
    with pytest.raises(ValueError, match=message):
        customer_features(np.array(times), np.array(amounts))


# --- terminal features, vectorised ------------------------------------------------------------

def test_terminal_window_ends_at_t_minus_delay_included_and_starts_after_t_minus_delay_minus_n():
    times = np.array([T0, T0 + 7 * DAY_NS - 1, T0 + 7 * DAY_NS, T0 + 8 * DAY_NS, T0 + 8 * DAY_NS + 1], dtype=np.int64)
    frauds = np.array([1, 0, 0, 0, 0])
    f = terminal_features(times, frauds)
    # T0+7d-1ns: window ends just before T0 -> empty; T0+7d: window (T0-1d, T0] holds T0.
    # T0+8d: 1-day window (T0, T0+1d] excludes T0; 7-day window (T0-6d, T0+1d] holds it.
    assert col(f, "TERMINAL_ID_NB_TX_1DAY_WINDOW") == [0, 0, 1, 0, 0]
    assert col(f, "TERMINAL_ID_RISK_1DAY_WINDOW") == [0, 0, 1, 0, 0]
    assert col(f, "TERMINAL_ID_NB_TX_7DAY_WINDOW") == [0, 0, 1, 1, 1]
    assert col(f, "TERMINAL_ID_RISK_7DAY_WINDOW") == [0, 0, 1, 1, 1]
    assert tuple(f) == DEFAULT_SPEC.terminal_names


def test_terminal_risk_is_frauds_over_count_and_zero_when_empty():
    times = np.array([T0, T0 + HOUR, T0 + 2 * HOUR, T0 + 10 * DAY_NS], dtype=np.int64)
    f = terminal_features(times, np.array([1, 0, 0, 0]))
    assert col(f, "TERMINAL_ID_NB_TX_7DAY_WINDOW") == [0, 0, 0, 3]
    assert col(f, "TERMINAL_ID_RISK_7DAY_WINDOW") == [0, 0, 0, 1 / 3]
    assert col(f, "TERMINAL_ID_RISK_1DAY_WINDOW") == [0, 0, 0, 0]  # (T0+2d, T0+3d] is empty


def test_terminal_with_zero_delay_counts_the_current_transaction():
    spec = FeatureSpec(terminal_windows=(1,), delay_days=0)
    f = terminal_features(np.array([T0, T0 + HOUR], dtype=np.int64), np.array([1, 0]), spec)
    assert col(f, "TERMINAL_ID_NB_TX_1DAY_WINDOW") == [1, 2]
    assert col(f, "TERMINAL_ID_RISK_1DAY_WINDOW") == [1.0, 0.5]


def test_terminal_frauds_must_be_zero_or_one():
    with pytest.raises(ValueError, match="frauds must be 0 or 1"):
        terminal_features(np.array([1, 2], dtype=np.int64), np.array([0, 2]))


def test_vectorised_functions_do_not_mutate_their_input():
    times = np.array([T0, T0 + HOUR], dtype=np.int64)
    amounts, frauds = np.array([1.0, 2.0]), np.array([1, 0])
    before = (times.copy(), amounts.copy(), frauds.copy())
    customer_features(times, amounts), terminal_features(times, frauds), time_features(times)
    assert all(np.array_equal(a, b) for a, b in zip((times, amounts, frauds), before))


# --- incremental state: hand-computed cases -----------------------------------------------------

def test_customer_state_matches_the_hand_computed_case():
    s = CustomerState()
    times = [T0, T0 + 12 * HOUR, T0 + DAY_NS, T0 + DAY_NS + 1, T0 + 8 * DAY_NS]
    out = [s.add(f"t{i}", t, a) for i, (t, a) in enumerate(zip(times, [10.0, 20.0, 30.0, 40.0, 50.0]))]
    assert [o["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] for o in out] == [1, 2, 2, 3, 1]
    assert [o["CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] for o in out] == [10, 15, 20, 25, 45]
    assert list(out[0]) == list(DEFAULT_SPEC.customer_names)


def test_customer_state_duplicate_returns_none_and_changes_nothing():
    s = CustomerState()
    s.add("a", T0, 10.0)
    assert s.add("a", T0, 10.0) is None
    assert s.add("a", T0 + HOUR, 99.0) is None  # same id, other payload: still a duplicate
    assert len(s) == 1
    assert s.add("b", T0 + HOUR, 20.0)["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2


def test_customer_state_out_of_order_event_sees_what_arrived_before_it():
    s = CustomerState(allowed_lateness_ns=DAY_NS)
    first = s.add("late-later", T0 + 10 * HOUR, 30.0)
    assert first["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    late = s.add("early", T0 + 2 * HOUR, 10.0)  # arrives after, happened before
    assert late["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1  # the later event is not in (t-1d, t]
    nxt = s.add("next", T0 + 11 * HOUR, 20.0)
    assert nxt["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 3
    assert nxt["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 20.0


def test_customer_state_rejects_events_beyond_the_allowed_lateness():
    s = CustomerState(allowed_lateness_ns=HOUR)
    s.add("a", T0 + 2 * HOUR, 1.0)
    assert s.add("b", T0 + HOUR, 1.0) is not None  # exactly at the lateness limit: accepted
    with pytest.raises(LateEventError, match="allowed lateness"):
        s.add("c", T0 + HOUR - 1, 1.0)
    assert len(s) == 2
    assert s.add("c", T0 + 3 * HOUR, 1.0)["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 3  # rejected event left no trace


def test_customer_state_pruning_bounds_memory():
    lateness = 2 * DAY_NS
    s = CustomerState(allowed_lateness_ns=lateness)
    for i in range(24 * 200):  # one transaction an hour for 200 days
        s.add(i, T0 + i * HOUR, 1.0)
        assert len(s) <= (30 * DAY_NS + lateness) // HOUR + 1
    assert len(s) == (30 * DAY_NS + lateness) // HOUR
    assert len(pickle.dumps(s)) < 40 * len(s)  # compact: ~16 bytes of arrays + a small id each


def test_states_reject_bad_amounts_times_and_lateness():
    with pytest.raises(ValueError, match="finite"):
        CustomerState().add("a", T0, float("nan"))
    with pytest.raises(ValueError, match="time_ns must be an integer number of nanoseconds"):
        CustomerState().add("a", 1.5, 1.0)
    with pytest.raises(ValueError, match="time_ns must be an integer number of nanoseconds"):
        TerminalState().add_label("a", "2018-04-01", 1)
    with pytest.raises(ValueError, match="allowed_lateness_ns must be an int >= 0"):
        CustomerState(allowed_lateness_ns=-1)
    assert CustomerState(allowed_lateness_ns=np.int64(5)).add("a", np.int64(T0), 1.0) is not None


def test_terminal_state_label_after_transaction_counts_for_later_events():
    s = TerminalState()
    assert s.add_transaction("a", T0) == {name: 0.0 for name in DEFAULT_SPEC.terminal_names}
    s.add_transaction("b", T0 + HOUR)
    s.add_label("a", T0, 1)
    s.add_label("b", T0 + HOUR, 0)
    f = s.add_transaction("c", T0 + 7 * DAY_NS + HOUR)
    assert f["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 2
    assert f["TERMINAL_ID_RISK_1DAY_WINDOW"] == 0.5


def test_terminal_state_label_before_transaction_is_kept_pending():
    s = TerminalState()
    s.add_label("a", T0, 1)
    assert s.pending_labels == 1
    s.add_transaction("a", T0)
    assert s.pending_labels == 0
    assert s.add_transaction("z", T0 + 7 * DAY_NS)["TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0


def test_terminal_state_fraud_labels_are_sticky_and_validated():
    s = TerminalState()
    s.add_transaction("a", T0)
    s.add_label("a", T0, 1)
    s.add_label("a", T0, 0)  # does not undo the fraud
    assert s.add_transaction("z", T0 + 7 * DAY_NS)["TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0
    with pytest.raises(ValueError, match="fraud must be 0 or 1"):
        s.add_label("a", T0, 2)


def test_terminal_state_label_with_a_different_time_still_finds_its_transaction():
    s = TerminalState()
    s.add_transaction("a", T0)
    s.add_label("a", T0 + 5, 1)
    assert s.add_transaction("z", T0 + 7 * DAY_NS)["TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0


def test_terminal_state_duplicates_and_late_transactions():
    s = TerminalState(allowed_lateness_ns=HOUR)
    s.add_transaction("a", T0 + 2 * HOUR)
    assert s.add_transaction("a", T0 + 2 * HOUR) is None
    with pytest.raises(LateEventError):
        s.add_transaction("b", T0)
    assert len(s) == 1


def test_terminal_state_pruning_bounds_transactions_and_pending_labels():
    lateness = DAY_NS
    s = TerminalState(allowed_lateness_ns=lateness)
    horizon = (37 * DAY_NS + lateness) // HOUR
    for i in range(24 * 120):
        s.add_transaction(f"t{i}", T0 + i * HOUR)
        s.add_label(f"ghost{i}", T0 + i * HOUR, 1)  # labels whose transactions never come
        assert len(s) <= horizon + 1
        assert s.pending_labels <= horizon + 1
    assert len(s) == horizon
    s.add_label("t0", T0, 1)  # transaction long pruned: nothing is kept
    assert s.pending_labels <= horizon


def test_states_pickle_round_trip_and_continue_identically():
    c, t = CustomerState(allowed_lateness_ns=HOUR), TerminalState(FeatureSpec(terminal_windows=(1, 2), delay_days=1))
    for i in range(50):
        c.add(f"c{i}", T0 + i * 3 * HOUR, i + 0.25)
        t.add_transaction(f"t{i}", T0 + i * 3 * HOUR)
        if i % 3 == 0:
            t.add_label(f"t{i}", T0 + i * 3 * HOUR, 1)
    t.add_label("future", T0 + 200 * HOUR, 1)
    c2, t2 = pickle.loads(pickle.dumps(c)), pickle.loads(pickle.dumps(t))
    assert c2.spec == c.spec and t2.spec == t.spec and t2.pending_labels == 1
    for i in range(50, 80):
        assert c2.add(f"c{i}", T0 + i * 3 * HOUR, 1.0) == c.add(f"c{i}", T0 + i * 3 * HOUR, 1.0)
        assert t2.add_transaction(f"t{i}", T0 + i * 3 * HOUR) == t.add_transaction(f"t{i}", T0 + i * 3 * HOUR)
    assert c2.add("c79", T0 + 79 * 3 * HOUR, 1.0) is None  # the id set is rebuilt after unpickling


# --- incremental == vectorised (property-based) ---------------------------------------------------

SMALL_SPEC = FeatureSpec(customer_windows=(1, 2), terminal_windows=(1, 3), delay_days=1)
specs = st.sampled_from([DEFAULT_SPEC, SMALL_SPEC, FeatureSpec((1,), (1,), 0)])
# Times on a coarse grid (quarter days) over ~40 days so ties and exact window boundaries are common.
grid_times = st.integers(min_value=0, max_value=160).map(lambda q: T0 + q * 6 * HOUR)
cents = st.integers(min_value=0, max_value=300_000).map(lambda c: c / 100)


def expected_customer(events, spec, k):
    """Vectorised customer features of event k over the events in ``events`` (time, id, amount)."""
    order = sorted(range(len(events)), key=lambda i: (events[i][0], events[i][1]))
    f = customer_features(np.array([events[i][0] for i in order], dtype=np.int64),
                          np.array([events[i][2] for i in order]), spec)
    row = order.index(k)
    return {name: float(v[row]) for name, v in f.items()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, times=st.lists(grid_times, min_size=1, max_size=40), data=st.data())
def test_customer_state_in_time_order_equals_vectorised(spec, times, data):
    times = sorted(set(times))  # a same-time twin arriving later is covered by the next test
    amounts = data.draw(st.lists(cents, min_size=len(times), max_size=len(times)))
    s = CustomerState(spec, allowed_lateness_ns=0)
    got = [s.add(i, t, a) for i, (t, a) in enumerate(zip(times, amounts))]
    want = customer_features(np.array(times, dtype=np.int64), np.array(amounts), spec)
    for name, values in want.items():
        # integer-cent sums make the two executors bit-identical (tighter than 1e-12 relative)
        assert [g[name] for g in got] == values.tolist(), name


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, times=st.lists(grid_times, min_size=1, max_size=30), data=st.data())
def test_customer_state_out_of_order_sees_exactly_the_events_that_arrived_before(spec, times, data):
    amounts = data.draw(st.lists(cents, min_size=len(times), max_size=len(times)))
    lateness = data.draw(st.sampled_from([0, 6 * HOUR, 3 * DAY_NS, 100 * DAY_NS]))
    arrival = data.draw(st.permutations(range(len(times))))
    dups = data.draw(st.lists(st.sampled_from(range(len(times))), max_size=5))
    s = CustomerState(spec, allowed_lateness_ns=lateness)
    accepted = []  # (time, id, amount) in arrival order
    stream = list(arrival) + dups
    for i in stream:
        event = (times[i], i, amounts[i])
        latest = max((e[0] for e in accepted), default=None)
        if latest is not None and times[i] < latest - lateness:
            with pytest.raises(LateEventError):  # lateness is checked first, duplicate or not
                s.add(i, times[i], amounts[i])
            continue
        if any(e[1] == i for e in accepted):
            assert s.add(i, times[i], amounts[i]) is None  # duplicate: nothing changes
            continue
        got = s.add(i, times[i], amounts[i])
        accepted.append(event)
        assert got == expected_customer(accepted, spec, len(accepted) - 1)


def expected_terminal(txs, frauds, spec, k):
    order = sorted(range(len(txs)), key=lambda i: (txs[i][0], txs[i][1]))
    f = terminal_features(np.array([txs[i][0] for i in order], dtype=np.int64),
                          np.array([1 if txs[i][1] in frauds else 0 for i in order]), spec)
    row = order.index(k)
    return {name: float(v[row]) for name, v in f.items()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from([DEFAULT_SPEC, SMALL_SPEC]), times=st.lists(grid_times, min_size=1, max_size=30),
       data=st.data())
def test_terminal_state_in_time_order_with_labels_equals_vectorised(spec, times, data):
    # With a delay of at least a day, everything in a terminal window has arrived and been
    # labelled before, so same-time twins do not matter here.
    times = sorted(times)
    frauds = data.draw(st.lists(st.integers(0, 1), min_size=len(times), max_size=len(times)))
    s = TerminalState(spec, allowed_lateness_ns=0)
    got = []
    for i, (t, y) in enumerate(zip(times, frauds)):
        got.append(s.add_transaction(i, t))
        s.add_label(i, t, y)  # the label is known right after the transaction
    want = terminal_features(np.array(times, dtype=np.int64), np.array(frauds), spec)
    for name, values in want.items():
        assert [g[name] for g in got] == values.tolist(), name


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, times=st.lists(grid_times, min_size=1, max_size=25), data=st.data())
def test_terminal_state_any_arrival_order_sees_the_transactions_and_labels_received_before(spec, times, data):
    frauds = data.draw(st.lists(st.integers(0, 1), min_size=len(times), max_size=len(times)))
    lateness = data.draw(st.sampled_from([0, 12 * HOUR, 5 * DAY_NS, 100 * DAY_NS]))
    events = [("tx", i) for i in range(len(times))] + [("label", i) for i in range(len(times))]
    events += data.draw(st.lists(st.sampled_from(events), max_size=6))  # redeliveries
    order = data.draw(st.permutations(events))
    s = TerminalState(spec, allowed_lateness_ns=lateness)
    accepted, fraud_labels = [], set()
    for kind, i in order:
        if kind == "label":
            s.add_label(i, times[i], frauds[i])
            if frauds[i]:
                fraud_labels.add(i)
            continue
        latest = max((e[0] for e in accepted), default=None)
        if latest is not None and times[i] < latest - lateness:
            with pytest.raises(LateEventError):
                s.add_transaction(i, times[i])
            continue
        if any(e[1] == i for e in accepted):
            assert s.add_transaction(i, times[i]) is None
            continue
        got = s.add_transaction(i, times[i])
        accepted.append((times[i], i))
        assert got == expected_terminal(accepted, fraud_labels, spec, len(accepted) - 1)


def test_states_are_deterministic_for_a_seeded_stream():
    rng = random.Random(7)
    stream = [(f"t{i}", T0 + rng.randrange(0, 40 * DAY_NS), rng.randrange(0, 10**5) / 100) for i in range(300)]
    stream.sort(key=lambda e: e[1])

    def replay():
        s = CustomerState()
        return [s.add(*e) for e in stream]

    assert replay() == replay()


def test_docstring_examples_run():
    result = doctest.testmod(windows)
    assert result.attempted > 0 and result.failed == 0
