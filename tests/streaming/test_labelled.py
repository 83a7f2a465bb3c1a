"""FeatureStore: labels meet the features their transactions were scored with, memory stays bounded."""

import pickle

import pytest

from streaming.labelled import Example, FeatureStore

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
