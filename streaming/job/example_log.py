"""The labelled-example log: every scored transaction's exact features, score and model version,
joined with its label, written as day-partitioned Parquet (``stream --example-log DIR``).

    ScoreFn ── (terminal, LogRecord) ──┐
                                       ├─ ExampleLogFn ─ DIR/day=YYYY-MM-DD/<content>.parquet
    labels ─── (terminal, Label) ──────┘        └─ (live monitoring) one MonitorBatch per bundle

:class:`ExampleLogFn` is keyed by terminal (as the terminal feature stage is): its
:class:`JoinStore` keeps each scored record until its label arrives (a row ``confirmed``) or
until it is ``keep_ns`` of event time older than the terminal's latest scored transaction
(``--max-label-delay-days``): it is then written as genuine (``TX_FRAUD`` 0), ``unconfirmed``.
A label that overtakes its transaction waits in the store for it, for as long. Labels whose
transaction never comes are already dead-lettered by the feature stage; here they are dropped
and counted (``labels_unmatched``).

Rows are written once per bundle, one file per event day, to
``DIR/day=YYYY-MM-DD/<sha1 of the rows' ids, labels and statuses>.parquet`` through Beam's
filesystems (a local directory, ``gs://`` on Dataflow): a bundle retried after its files were
written writes the same rows again under the same names, so rows are not duplicated (readers
also keep each ``TRANSACTION_ID`` once). Each file is written to ``<name>.tmp`` then renamed, so
a reader never sees half a file, and records the feature spec (``streamscore.feature_spec``
and its hash) in its Parquet metadata like a ``streamscore featurize`` table, so ``train``,
``evaluate``, ``retrain`` and ``monitor`` read the directory as a feature table.

The columns: :data:`KEY_COLUMNS` of a feature table (``TRANSACTION_ID``, ``TX_DATETIME``,
``CUSTOMER_ID``, ``TERMINAL_ID``, ``TX_FRAUD``), ``label_status``, ``score``,
``model_version``, then the features in spec order (:func:`log_columns`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from streaming.features.spec import DAY_NS, FeatureSpec
from streaming.features.transaction import time_ns
from streaming.io.events import Label

CONFIRMED = "confirmed"
UNCONFIRMED = "unconfirmed"
KEY_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD")
MONITOR_KEY = "monitor"
_NEVER = 2**63 - 1


def log_columns(spec: FeatureSpec) -> list[str]:
    """The log's columns, in file order."""
    return [*KEY_COLUMNS, "label_status", "score", "model_version", *spec.names]


class LogRecord(NamedTuple):
    """What ScoreFn hands the log for one scored transaction."""

    transaction_id: str
    time_ns: int
    customer_id: str
    terminal_id: str
    features: tuple[float, ...]
    score: float
    model_version: str
    online_score: float | None = None  # what the online model served (streaming.job.served)
    online_model_version: str | None = None


class LogRow(NamedTuple):
    record: LogRecord
    label: int
    status: str  # CONFIRMED or UNCONFIRMED


class MonitorBatch(NamedTuple):
    """One bundle's evidence for live monitoring: every scored vector and every labelled row.

    ``times_ns``/``features``/``scores``: the records scored (in the bundle); ``labelled``: the
    confirmed rows written (times, customers, labels, scores).
    """

    times_ns: np.ndarray
    features: np.ndarray
    scores: np.ndarray
    labelled_times_ns: np.ndarray
    labelled_customers: np.ndarray
    labels: np.ndarray
    labelled_scores: np.ndarray
    labelled_features: np.ndarray | None = None  # (rows, spec features): for the segments of live monitoring


class JoinStore:
    """Scored records waiting for their label, for one terminal; labels waiting for their record.

    >>> store = JoinStore(keep_ns=10)
    >>> r = LogRecord("t1", 0, "c", "term", (1.0,), 0.2, "v1")
    >>> store.add(r) is None
    True
    >>> store.label("t1", 1, 0)
    LogRow(record=LogRecord(transaction_id='t1', time_ns=0, customer_id='c', terminal_id='term', features=(1.0,), score=0.2, model_version='v1', online_score=None, online_model_version=None), label=1, status='confirmed')
    >>> store.add(LogRecord("t2", 1, "c", "term", (2.0,), 0.1, "v1")) is None
    True
    >>> [row.status for row in store.add(LogRecord("t3", 20, "c", "term", (3.0,), 0.1, "v1")) or store.take_expired()]
    ['unconfirmed']
    """

    def __init__(self, keep_ns: int):
        if keep_ns <= 0:
            raise ValueError(f"keep_ns must be > 0, got {keep_ns}")
        self.keep_ns = keep_ns
        # Plain tuples (LogRecord's fields), not LogRecords: the store is pickled with the key's state
        # at every bundle, and a NamedTuple pickles ~10x slower than a tuple (copyreg's __reduce_ex__).
        # The record type (LogRecord, or another stage's NamedTuple with ``transaction_id`` and
        # ``time_ns`` as fields 0 and 1, e.g. streaming.job.served's ServedRecord) is kept once per store.
        self._records: dict[str, tuple] = {}
        self._kind = LogRecord
        self._pending: dict[str, tuple[int, int]] = {}  # transaction id -> (its time, label)
        self._latest: int | None = None
        self._expired: list[LogRow] = []
        self._oldest = _NEVER  # a lower bound of every kept record's and pending label's time
        self.unmatched_labels = 0

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: LogRecord) -> LogRow | None:
        """Keep a scored record for its label; its row at once if the label came first."""
        pending = self._pending.pop(record.transaction_id, None)
        row = None
        if pending is not None:
            row = LogRow(record, pending[1], CONFIRMED)
        else:
            self._kind = type(record)
            self._records[record.transaction_id] = tuple(record)
            self._oldest = min(self._oldest, record.time_ns)
        self._advance(record.time_ns)
        return row

    def label(self, transaction_id: str, label: int, time_ns_: int) -> LogRow | None:
        record = self._records.pop(transaction_id, None)
        if record is not None:
            return LogRow(self._kind._make(record), int(label), CONFIRMED)
        if self._latest is None or time_ns_ >= self._latest - self.keep_ns:
            self._pending[transaction_id] = (int(time_ns_), int(label))
            self._oldest = min(self._oldest, int(time_ns_))
        else:
            self.unmatched_labels += 1
        return None

    def take_expired(self) -> list[LogRow]:
        """The rows of records whose label did not come within ``keep_ns`` (genuine, unconfirmed)."""
        out, self._expired = self._expired, []
        return out

    def _advance(self, t: int) -> None:
        if self._latest is not None and t <= self._latest:
            return
        self._latest = t
        cutoff = t - self.keep_ns
        if cutoff <= self._oldest:  # nothing kept is old enough: no scan (the common case)
            return
        old = [tid for tid, r in self._records.items() if r[1] < cutoff]  # r[1]: time_ns
        for tid in old:
            self._expired.append(LogRow(self._kind._make(self._records.pop(tid)), 0, UNCONFIRMED))
        stale = [tid for tid, (tt, _) in self._pending.items() if tt < cutoff]
        for tid in stale:
            del self._pending[tid]
        self.unmatched_labels += len(stale)
        self._oldest = min((r[1] for r in self._records.values()), default=_NEVER)
        self._oldest = min(self._oldest, min((tt for tt, _ in self._pending.values()), default=_NEVER))


# --------------------------------------------------------------------------- Parquet


def rows_table(rows: list[LogRow], spec: FeatureSpec):
    """The rows as a pyarrow Table with the log's schema and the spec in its metadata."""
    import pyarrow as pa

    from models.evaluation import SPEC_HASH_KEY, SPEC_KEY

    records = [r.record for r in rows]
    features = np.asarray([r.features for r in records], dtype=np.float64).reshape(len(rows), len(spec.names))
    columns = {
        "TRANSACTION_ID": pa.array([r.transaction_id for r in records], pa.string()),
        "TX_DATETIME": pa.array(np.asarray([r.time_ns for r in records], dtype="datetime64[ns]"), pa.timestamp("ns")),
        "CUSTOMER_ID": pa.array([r.customer_id for r in records], pa.string()),
        "TERMINAL_ID": pa.array([r.terminal_id for r in records], pa.string()),
        "TX_FRAUD": pa.array(np.asarray([r.label for r in rows], dtype=np.int64)),
        "label_status": pa.array([r.status for r in rows], pa.string()),
        "score": pa.array(np.asarray([r.score for r in records], dtype=np.float64)),
        "model_version": pa.array([r.model_version for r in records], pa.string()),
    }
    for j, name in enumerate(spec.names):
        columns[name] = pa.array(features[:, j])
    metadata = {SPEC_HASH_KEY: spec.spec_hash.encode(), SPEC_KEY: json.dumps(spec.to_dict(), sort_keys=True).encode()}
    return pa.table(columns).replace_schema_metadata(metadata)


def content_name(rows: list[LogRow]) -> str:
    """A file name from what the rows are (ids, labels, statuses; order-independent)."""
    digest = hashlib.sha1()
    for key in sorted(f"{r.record.transaction_id}\x00{r.label}\x00{r.status}" for r in rows):
        digest.update(key.encode())
        digest.update(b"\n")
    return f"part-{digest.hexdigest()[:24]}.parquet"


def day_of(time_ns_: int) -> str:
    return str(np.datetime64(int(time_ns_), "ns").astype("datetime64[D]"))


def write_rows(directory: str, rows: list[LogRow], spec: FeatureSpec) -> list[str]:
    """Write ``rows`` as one file per event day under ``directory``; the paths written."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    by_day: dict[str, list[LogRow]] = defaultdict(list)
    for row in rows:
        by_day[day_of(row.record.time_ns)].append(row)
    written = []
    for day, day_rows in sorted(by_day.items()):
        folder = FileSystems.join(directory, f"day={day}")
        path = FileSystems.join(folder, content_name(day_rows))
        buffer = io.BytesIO()
        pq.write_table(rows_table(day_rows, spec), buffer)
        FileSystems.mkdirs(folder) if not FileSystems.exists(folder) else None
        temp = path + ".tmp"
        with FileSystems.create(temp) as f:
            f.write(buffer.getvalue())
        if FileSystems.exists(path):  # a retried bundle: the same rows under the same name
            FileSystems.delete([path])
        FileSystems.rename([temp], [path])
        written.append(path)
    return written


# --------------------------------------------------------------------------- Beam


def key_label(element) -> tuple[str, Label]:
    """``(customer_id, Label)`` (the parser's keyed output) → ``(terminal_id, Label)``."""
    return element[1].terminal_id, element[1]


@beam.typehints.with_input_types(beam.typehints.KV[str, Any])
class ExampleLogFn(beam.DoFn):
    """(terminal_id, LogRecord | Label) → the log's files (``directory``) and, with ``monitor``,
    one ``(MONITOR_KEY, MonitorBatch)`` per bundle for :class:`~streaming.job.monitor.LiveMonitorFn`."""

    STORE = ReadModifyWriteStateSpec("joined", PickleCoder())

    def __init__(self, spec: FeatureSpec, keep_days: float, directory: str | None = None, monitor: bool = False):
        if not keep_days > 0:
            raise ValueError(f"keep_days must be > 0, got {keep_days}")
        self.spec = spec
        self.keep_days = keep_days
        self.directory = directory
        self.monitor = monitor
        self._confirmed = Metrics.counter(self.__class__, "rows_confirmed")
        self._unconfirmed = Metrics.counter(self.__class__, "rows_unconfirmed")
        self._unmatched = Metrics.counter(self.__class__, "labels_unmatched")
        self._files = Metrics.counter(self.__class__, "files_written")

    def start_bundle(self):
        self._rows: list[LogRow] = []
        self._scored: list[LogRecord] = []
        self._latest = None  # the bundle's latest element timestamp: the monitor batch's

    def process(self, element, timestamp=beam.DoFn.TimestampParam, store=beam.DoFn.StateParam(STORE)):
        _, value = element
        if self._latest is None or timestamp > self._latest:
            self._latest = timestamp
        joined = store.read()
        if joined is None:
            joined = JoinStore(int(self.keep_days * DAY_NS))
        before = joined.unmatched_labels
        if isinstance(value, Label):
            row = joined.label(value.transaction_id, value.label, time_ns(value.event_time))
        else:
            if self.monitor:
                self._scored.append(value)
            row = joined.add(value)
            self._rows.extend(joined.take_expired())
        if row is not None:
            self._rows.append(row)
        self._unmatched.inc(joined.unmatched_labels - before)
        joined.unmatched_labels = 0
        store.write(joined)
        return ()

    def finish_bundle(self):
        rows, scored = self._rows, self._scored
        self._rows, self._scored = [], []
        confirmed = [r for r in rows if r.status == CONFIRMED]
        self._confirmed.inc(len(confirmed))
        self._unconfirmed.inc(len(rows) - len(confirmed))
        if self.directory and rows:
            self._files.inc(len(write_rows(self.directory, rows, self.spec)))
        if self.monitor and (scored or confirmed):
            n = len(self.spec.names)
            batch = MonitorBatch(
                np.fromiter((r.time_ns for r in scored), np.int64, len(scored)),
                np.asarray([r.features for r in scored], dtype=np.float64).reshape(len(scored), n),
                np.fromiter((r.score for r in scored), np.float64, len(scored)),
                np.fromiter((r.record.time_ns for r in confirmed), np.int64, len(confirmed)),
                np.asarray([r.record.customer_id for r in confirmed], dtype=object),
                np.fromiter((r.label for r in confirmed), np.int64, len(confirmed)),
                np.fromiter((r.record.score for r in confirmed), np.float64, len(confirmed)),
                np.asarray([r.record.features for r in confirmed], dtype=np.float64).reshape(len(confirmed), n))
            yield WindowedValue((MONITOR_KEY, batch), self._latest, [GlobalWindow()])
