"""What ``streamscore controller`` reads: shadow events, and scored (later labelled) events.

Two small interfaces, so the controller does not care where the evidence comes from:

* :class:`ShadowLogReader` — the predictor's shadow log (``serve --shadow-log DIR``: JSON lines
  ``shadow-HOST-PID.jsonl`` and their rotated ``.jsonl.1``, every replica's files in DIR):
  :meth:`~ShadowLogReader.evidence` counts one challenger version's events and its alerts at
  the controller's threshold, and, given the labels known so far (by transaction id), both
  models' AP on the labelled shadow events. A rotated-away file's lines are no longer
  counted: a lower bound, so a promotion can come later, never earlier.
* :class:`ScoredRows` — anything with ``rows()`` giving one row per scored transaction with the
  columns :data:`COLUMNS` (``TX_FRAUD`` 1/0 once labelled, NaN before). Implemented by
  :class:`ExampleLogRows` (the streaming job's labelled-example log, ``stream --example-log DIR``:
  ``DIR/day=YYYY-MM-DD/*.parquet``; every row there is labelled — ``confirmed``, or
  ``unconfirmed`` genuine after the label delay) and :class:`ScoreLinesRows` (JSON lines of the
  ``scores`` topic's messages — ``transaction_id``, ``event_time``, ``score``, ``model_version``
  — optionally with ``customer_id`` and ``label``: timely alert rates before labels arrive).
  :func:`combined_rows` merges several, a labelled row winning over an unlabelled one of the
  same transaction.
* :class:`MonitoringEvents` — the retrain trigger's input, the job's ``monitoring`` events:
  :class:`MonitoringSubscription` (Pub/Sub, or the emulator) and :class:`MonitoringLines`
  (JSON lines); each ``pull`` is acknowledged (``ack``) only once the controller has audited its
  decision on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from models.controller import ShadowEvidence
from models.evaluation import average_precision
from models.predictor.shadow import LOG_PREFIX

COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "score", "model_version", "TX_FRAUD")


class ScoredRows(Protocol):
    def rows(self) -> pd.DataFrame:
        """One row per scored transaction, columns :data:`COLUMNS`."""


def _lines(paths: Iterable[Path], where: str):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{where}: {path} line {number} is not JSON: {exc}") from None


class ShadowLogReader:
    """The shadow log directory of one or more predictors."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def evidence(self, version: str, alert_threshold: float, labels: Mapping[str, float] | None = None) -> ShadowEvidence:
        if not self.directory.is_dir():
            raise FileNotFoundError(f"shadow log {str(self.directory)!r} is not a directory (serve --shadow-log DIR)")
        events = alerts = 0
        labelled: list[tuple[float, float, float]] = []  # (label, shadow score, production score)
        for line in _lines(sorted(self.directory.glob(f"{LOG_PREFIX}*.jsonl*")), "shadow log"):
            if line.get("shadow_version") == version:
                events += 1
                alerts += line["shadow_score"] > alert_threshold
                label = labels.get(line["transaction_id"]) if labels else None
                if label is not None:
                    labelled.append((label, line["shadow_score"], line["production_score"]))
        y, shadow, production = (np.array(c, dtype=np.float64) for c in zip(*labelled)) if labelled else ([],) * 3
        both = len(labelled) and 0 < np.sum(y) < len(y)
        return ShadowEvidence(version, events, alerts, len(labelled),
                              average_precision(y, shadow) if both else None,
                              average_precision(y, production) if both else None)


class ExampleLogRows:
    """:class:`ScoredRows` over the labelled-example log (``DIR/day=YYYY-MM-DD/*.parquet``)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def rows(self) -> pd.DataFrame:
        if not self.directory.is_dir():
            raise FileNotFoundError(f"example log {str(self.directory)!r} is not a directory (stream --example-log DIR)")
        files = [f for part in sorted(self.directory.glob("day=*")) for f in sorted(part.glob("*.parquet"))]
        if not files:
            return _empty()
        try:
            frame = pd.concat([pd.read_parquet(f, columns=list(COLUMNS)) for f in files], ignore_index=True)
        except Exception as exc:  # pyarrow raises several types for a corrupt file or a missing column
            raise ValueError(f"example log {str(self.directory)!r}: expected the columns {', '.join(COLUMNS)}; "
                             f"could not read it: {exc}") from exc
        frame["TX_FRAUD"] = frame["TX_FRAUD"].astype(np.float64)
        return frame.drop_duplicates("TRANSACTION_ID", keep="first").reset_index(drop=True)


class ScoreLinesRows:
    """:class:`ScoredRows` over JSON-lines files (or directories of ``*.jsonl``) of score messages."""

    def __init__(self, paths: Sequence[str | Path]):
        self.paths = [Path(p) for p in paths]

    def rows(self) -> pd.DataFrame:
        files = []
        for path in self.paths:
            files += sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        records = []
        for line in _lines(files, "score lines"):
            try:
                records.append((str(line["transaction_id"]), line["event_time"], str(line.get("customer_id", "")),
                                float(line["score"]), str(line["model_version"]),
                                float(line["label"]) if line.get("label") is not None else np.nan))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"score lines: each line needs transaction_id, event_time, score and model_version "
                                 f"(customer_id and label optional); got {sorted(line)[:8]}: {exc}") from None
        if not records:
            return _empty()
        frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
        frame["TX_DATETIME"] = pd.to_datetime(frame["TX_DATETIME"], utc=True).dt.tz_localize(None)
        return frame


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"TRANSACTION_ID": pd.Series(dtype=object), "TX_DATETIME": pd.Series(dtype="datetime64[ns]"),
                         "CUSTOMER_ID": pd.Series(dtype=object), "score": pd.Series(dtype=np.float64),
                         "model_version": pd.Series(dtype=object), "TX_FRAUD": pd.Series(dtype=np.float64)})


def known_labels(rows: pd.DataFrame) -> dict[str, float]:
    """Transaction id → label, for the rows whose label is known."""
    labelled = rows[rows["TX_FRAUD"].notna()]
    return dict(zip(labelled["TRANSACTION_ID"].astype(str), labelled["TX_FRAUD"].astype(float)))


def combined_rows(sources: Iterable[ScoredRows]) -> pd.DataFrame:
    """Every source's rows, each transaction once (a labelled row before an unlabelled one)."""
    frames = [s.rows() for s in sources]
    frames = [f for f in frames if len(f)]
    if not frames:
        return _empty()
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.assign(_unlabelled=frame["TX_FRAUD"].isna()).sort_values("_unlabelled", kind="stable")
    return frame.drop_duplicates("TRANSACTION_ID", keep="first").drop(columns="_unlabelled").reset_index(drop=True)


# --------------------------------------------------------------------------- monitoring events (the trigger's input)


class MonitoringEvents(Protocol):
    def pull(self) -> list[dict]:
        """The ``monitoring`` events that arrived since the last :meth:`ack`ed pull."""

    def ack(self) -> None:
        """The last pull's events were handled (decided on, audited): do not deliver them again."""


class MonitoringLines:
    """:class:`MonitoringEvents` from JSON-lines files (a file, or a directory of ``*.jsonl``),
    e.g. a capture of the ``monitoring`` topic; each line is delivered once per process (the
    offset reached in each file is kept after :meth:`ack`)."""

    def __init__(self, paths: Sequence[str | Path]):
        self.paths = [Path(p) for p in paths]
        self._offsets: dict[Path, int] = {}
        self._pending: dict[Path, int] = {}

    def pull(self) -> list[dict]:
        files = []
        for path in self.paths:
            files += sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        out, self._pending = [], {}
        for path in files:
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(self._offsets.get(path, 0))
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line still being written is read next time
            for number, line in enumerate(data[:end].splitlines(), 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except ValueError as exc:
                        raise ValueError(f"monitoring events: {path} (line {number} after offset "
                                         f"{self._offsets.get(path, 0)}) is not JSON: {exc}") from None
            self._pending[path] = self._offsets.get(path, 0) + end
        return out

    def ack(self) -> None:
        self._offsets.update(self._pending)
        self._pending = {}


class MonitoringSubscription:
    """:class:`MonitoringEvents` from a Pub/Sub subscription to the job's ``monitoring`` topic
    (``projects/P/subscriptions/S``; the emulator at ``emulator_host`` when given). Messages are
    acknowledged only by :meth:`ack`, after the controller has decided on them and audited the
    decision: a controller that dies in between gets them again."""

    def __init__(self, subscription: str, *, emulator_host: str | None = None, max_messages: int = 1000,
                 settle: float = 1.0):
        self.subscription = subscription
        self.max_messages = max_messages
        self.settle = settle
        if emulator_host:
            from streaming.io.pubsub_local import subscriber_client

            self._client = subscriber_client(emulator_host)
        else:  # pragma: no cover - needs Google Cloud credentials
            from google.cloud import pubsub_v1

            self._client = pubsub_v1.SubscriberClient()
        self._ack_ids: list[str] = []

    def pull(self) -> list[dict]:
        """Everything the subscription holds now: pulls until a pull comes back short, and keeps
        pulling for ``settle`` seconds while they come back empty (an empty answer from Pub/Sub
        does not mean there is nothing: a message published a moment ago may come on the next)."""
        import time

        from google.api_core import exceptions

        out, self._ack_ids = [], []
        settle_until = time.monotonic() + self.settle
        while True:
            try:
                response = self._client.pull(request={"subscription": self.subscription,
                                                      "max_messages": self.max_messages}, timeout=2.0, retry=None)
                received = response.received_messages
            except (exceptions.DeadlineExceeded, exceptions.ServiceUnavailable):
                received = []
            for item in received:
                self._ack_ids.append(item.ack_id)
                try:
                    out.append(json.loads(item.message.data))
                except ValueError:
                    out.append({"kind": "unreadable", "data": item.message.data[:200].decode("utf-8", "replace")})
            if len(received) == self.max_messages:
                continue
            if received or out or time.monotonic() >= settle_until:
                return out
            time.sleep(0.1)

    def ack(self) -> None:
        for start in range(0, len(self._ack_ids), 1000):
            self._client.acknowledge(request={"subscription": self.subscription,
                                              "ack_ids": self._ack_ids[start:start + 1000]})
        self._ack_ids = []

    def close(self) -> None:
        self._client.close()
