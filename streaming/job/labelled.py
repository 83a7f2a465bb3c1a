"""Joining delayed labels with the exact feature vectors their transactions were scored with.

Pure Python (no Beam): :class:`FeatureStore` keeps, for one key (a terminal in the streaming
job), the feature vector of each recent transaction until its label arrives or it is older
than the maximum label delay. The online learner then learns from exactly what the model saw.

>>> store = FeatureStore(keep_ns=7 * 86_400 * 10**9)
>>> store.add("t1", 0, (1.0, 2.0))
>>> store.label("t1", 1)
Example(transaction_id='t1', time_ns=0, features=(1.0, 2.0), label=1)
>>> store.label("t1", 1) is None  # each transaction is learned from once
True
"""

from __future__ import annotations

from typing import NamedTuple


class Example(NamedTuple):
    """One labelled training example: the scored feature vector and the label that came later."""

    transaction_id: str
    time_ns: int
    features: tuple[float, ...]
    label: int


class FeatureStore:
    """Feature vectors by transaction id, kept for ``keep_ns`` of event time after the key's latest event.

    A label may arrive before its transaction (when both topics are backlogged, the labels
    reader can overtake the transactions reader): it is then kept as *pending*, for the same
    ``keep_ns``, and :meth:`add` returns the example when the transaction comes.

    >>> store = FeatureStore(keep_ns=10)
    >>> store.label("t2", 0, time_ns=5) is None  # no transaction yet: kept pending
    True
    >>> store.add("t2", 5, (3.0,))
    Example(transaction_id='t2', time_ns=5, features=(3.0,), label=0)
    """

    def __init__(self, keep_ns: int):
        if keep_ns <= 0:
            raise ValueError(f"keep_ns must be > 0, got {keep_ns}")
        self.keep_ns = keep_ns
        self._entries: dict[str, tuple[int, tuple[float, ...]]] = {}
        self._pending: dict[str, tuple[int, int]] = {}  # transaction id -> (its time, label)
        self._latest: int | None = None
        self.expired = 0  # feature vectors whose label never came
        self.expired_labels = 0  # labels whose transaction never came

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pending_labels(self) -> int:
        return len(self._pending)

    def add(self, transaction_id: str, time_ns: int, features: tuple[float, ...]) -> Example | None:
        """Keep a scored vector until its label comes; the example at once if its label came first."""
        pending = self._pending.pop(transaction_id, None)
        example = None
        if pending is not None:
            example = Example(transaction_id, int(time_ns), tuple(features), pending[1])
        else:
            self._entries[transaction_id] = (int(time_ns), tuple(features))
        self._advance(int(time_ns))
        return example

    def label(self, transaction_id: str, label: int, time_ns: int | None = None) -> Example | None:
        """The example for a labelled transaction (removed from the store), or None if unknown/expired.

        With ``time_ns`` (the transaction's event time) a label for a transaction not seen yet
        is kept pending, unless it is already older than the store keeps anything.
        """
        entry = self._entries.pop(transaction_id, None)
        if entry is None:
            if time_ns is not None and (self._latest is None or time_ns >= self._latest - self.keep_ns):
                self._pending[transaction_id] = (int(time_ns), int(label))
            return None
        return Example(transaction_id, entry[0], entry[1], int(label))

    def forget_label(self, transaction_id: str) -> bool:
        """Drop a pending label (its transaction never came and it was dead-lettered); whether one was held."""
        return self._pending.pop(transaction_id, None) is not None

    def _advance(self, time_ns: int) -> None:
        if self._latest is None or time_ns > self._latest:
            self._latest = time_ns
            self._prune()

    def _prune(self) -> None:
        cutoff = self._latest - self.keep_ns
        old = [tid for tid, (t, _) in self._entries.items() if t < cutoff]
        for tid in old:
            del self._entries[tid]
        self.expired += len(old)
        stale = [tid for tid, (t, _) in self._pending.items() if t < cutoff]
        for tid in stale:
            del self._pending[tid]
        self.expired_labels += len(stale)
