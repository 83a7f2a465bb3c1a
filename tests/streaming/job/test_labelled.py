"""FeatureStore: labels meet the features their transactions were scored with, memory stays bounded."""

import pickle

import pytest

from streaming.job.labelled import Example, FeatureStore

DAY = 86_400 * 10**9


def test_label_returns_the_stored_vector_once():
    store = FeatureStore(keep_ns=8 * DAY)
    store.add("a", 0, (1.0, 2.0))
    store.add("b", DAY, (3.0, 4.0))
    assert store.label("b", 0) == Example("b", DAY, (3.0, 4.0), 0)
    assert store.label("b", 0) is None and store.label("zzz", 1) is None
    assert len(store) == 1


def test_entries_older_than_the_label_delay_expire():
    store = FeatureStore(keep_ns=8 * DAY)
    store.add("old", 0, (1.0,))
    store.add("new", 8 * DAY, (2.0,))  # exactly keep_ns later: kept
    assert len(store) == 2
    store.add("newer", 8 * DAY + 1, (3.0,))
    assert store.label("old", 1) is None and store.expired == 1
    assert len(pickle.loads(pickle.dumps(store))) == 2


def test_out_of_order_adds_do_not_move_the_horizon_back():
    store = FeatureStore(keep_ns=DAY)
    store.add("late", 5 * DAY, (1.0,))
    store.add("early", 4 * DAY + 1, (2.0,))
    assert len(store) == 2


def test_keep_must_be_positive():
    with pytest.raises(ValueError, match="keep_ns must be > 0, got 0"):
        FeatureStore(0)


def test_a_label_before_its_transaction_waits_and_joins_when_it_comes():
    store = FeatureStore(keep_ns=8 * DAY)
    store.add("x", 10 * DAY, (0.0,))
    assert store.label("a", 1, time_ns=9 * DAY) is None and store.pending_labels == 1
    assert store.add("a", 9 * DAY, (5.0,)) == Example("a", 9 * DAY, (5.0,), 1)
    assert store.pending_labels == 0 and len(store) == 1  # joined: nothing kept for "a"
    assert store.label("a", 1) is None  # learned from once


def test_pending_labels_expire_like_vectors_and_stale_ones_are_not_kept():
    store = FeatureStore(keep_ns=DAY)
    store.add("x", 5 * DAY, (0.0,))
    assert store.label("old", 0, time_ns=3 * DAY) is None and store.pending_labels == 0  # already too old
    store.label("soon", 0, time_ns=5 * DAY)
    store.add("y", 7 * DAY, (0.0,))  # the horizon moves past "soon"
    assert store.pending_labels == 0 and store.expired_labels == 1
    assert store.add("soon", 5 * DAY, (1.0,)) is None  # came too late to join: kept, as any vector
    assert store.label("nope", 1) is None and store.pending_labels == 0  # without a time: not kept
