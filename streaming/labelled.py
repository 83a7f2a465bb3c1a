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
    """Feature vectors by transaction id, kept for ``keep_ns`` of event time after the key's latest event."""

    def __init__(self, keep_ns: int):
        if keep_ns <= 0:
            raise ValueError(f"keep_ns must be > 0, got {keep_ns}")
        self.keep_ns = keep_ns
        self._entries: dict[str, tuple[int, tuple[float, ...]]] = {}
        self._latest: int | None = None
        self.expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, transaction_id: str, time_ns: int, features: tuple[float, ...]) -> None:
        self._entries[transaction_id] = (int(time_ns), tuple(features))
        if self._latest is None or time_ns > self._latest:
            self._latest = int(time_ns)
            self._prune()

    def label(self, transaction_id: str, label: int) -> Example | None:
        """The example for a labelled transaction (removed from the store), or None if unknown/expired."""
        entry = self._entries.pop(transaction_id, None)
        if entry is None:
            return None
        return Example(transaction_id, entry[0], entry[1], int(label))

    def _prune(self) -> None:
        cutoff = self._latest - self.keep_ns
        old = [tid for tid, (t, _) in self._entries.items() if t < cutoff]
        for tid in old:
            del self._entries[tid]
        self.expired += len(old)
