"""The continuous-training loop in the demo: ``streamscore up --drift-day N``.

With ``--drift-day`` the demo's traffic drifts (:func:`streaming.sim.simulator.simulate`'s
``drift_day`` / ``drift_kind``) and the loop runs beside the stream, as it would in production:

* the predictor scores the registry's ``challenger`` in shadow (``serve --shadow-log``);
* the job writes its labelled-example log (``stream --example-log WORKDIR/example-log``): every
  scored transaction's features, score and model version once its label has arrived — the
  retrain's source, so the challenger trains on exactly what the stream scored;
* :class:`LoopRecorder` writes the score lines the controller watches a promotion with
  (``WORKDIR/loop/scores.jsonl``: each score as it arrives, again with its label once the label
  has been published: a timely alert rate, and cheap to re-read every tick);
* ``streamscore controller`` (a process, like the predictor and the job) reads the job's
  ``monitoring`` topic: a drift alarm starts a retrain (gate → shadow or refuse), the shadow
  is promoted after :data:`SHADOW_EVENTS` events, the promotion is watched and rolled back if
  it breaks its bounds; every step is an audit event in the registry;
* :class:`AuditFeed` prints each new audit event as it is written (the live story), and
  :meth:`LoopRecorder.summary` gives the summary's ``loop`` section: the story, and the
  stream's AP before the drift day, after it (until a promotion) and after the promotion.

Labels come sooner than in the default demo (:data:`LABEL_DELAY`: frauds after 1–2 days,
genuine after 2), so a retrain on the latest fully-labelled window can see the drift within
the replay; the retrain's windows (:data:`RETRAIN`) respect that delay.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd

from streaming.io.publish import LabelDelay

LABEL_DELAY = LabelDelay(fraud_days=(1.0, 2.0), genuine_days=2.0)
#: The retrain's windows in days: labels are complete ``delay`` days after a transaction (LABEL_DELAY).
RETRAIN = {"train": 5, "eval": 4, "delay": 2}
SHADOW_EVENTS = 200  # events the challenger is scored in shadow before the controller promotes it
WATCH = {"min_scored": 150, "min_labelled": 150, "window_days": 3, "min_ap": 0.5}
COOLDOWN_S = 12.0  # wall-clock seconds between two retrains (about 3.5 simulated days of the replay)
#: A non-inferiority gate: after a drift alarm a recent model is preferred unless it is worse by more than this
#: (the gate's window is a few hundred rows here: a 90 % interval of ΔAP spans ±0.2, so margin 0 refuses clear gains).
GATE_MARGIN = 0.02
RETRIES = 3  # an alarm's retrain is retried while its challengers are refused (the first has no post-drift labels)
#: The traffic with --drift-day: 28 days leave room for retrain, shadow and watch after the drift; 150 cards give
#: the gate's window (cards without an earlier fraud) enough rows to decide; ~3.4 s of replay per simulated day.
DEFAULTS = {"customers": 150, "terminals": 300, "days": 28, "rate": 150.0}
SUBSCRIPTION = "monitoring-controller"
EXAMPLE_LOG = "example-log"  # under the workdir: the job's --example-log, the controller's --retrain-source


def job_args(workdir: Path) -> list[str]:
    """The streaming job's extra flags with --drift-day."""
    return ["--example-log", str(Path(workdir) / EXAMPLE_LOG)]


def controller_args(registry: Path, workdir: Path, emulator, trust: list[str], seed: int) -> list[str]:
    """``streamscore controller``'s command line for the demo."""
    loop = workdir / "loop"
    return ["controller", "--registry", str(registry), "--shadow-log", str(workdir / "shadow"),
            "--scores-from", str(loop / "scores.jsonl"), "--shadow-events", str(SHADOW_EVENTS),
            "--min-scored", str(WATCH["min_scored"]), "--min-labelled", str(WATCH["min_labelled"]),
            "--window-days", str(WATCH["window_days"]), "--min-ap", str(WATCH["min_ap"]), "--interval", "1",
            "--retrain-on-alarm", "--monitoring-subscription", SUBSCRIPTION, "--project", emulator.project,
            "--emulator-host", emulator.host_port, "--retrain-source", str(workdir / EXAMPLE_LOG),
            "--retrain-train-days", str(RETRAIN["train"]), "--retrain-eval-days", str(RETRAIN["eval"]),
            "--retrain-delay-days", str(RETRAIN["delay"]), "--retrain-cooldown", str(COOLDOWN_S),
            "--retrain-retries", str(RETRIES),
            "--retrain-nthread", "1", "--gate-resamples", "300", "--gate-margin", str(GATE_MARGIN), "--seed", str(seed),
            *trust]


class LoopRecorder:
    """The controller's score lines, the replay's day, and the AP of each phase."""

    def __init__(self, workdir: Path, df: pd.DataFrame, drift_day: int):
        self.dir = Path(workdir) / "loop"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.truth = dict(zip(df["TRANSACTION_ID"].astype(str), df["TX_FRAUD"].astype(int)))
        self.cards = dict(zip(df["TRANSACTION_ID"].astype(str), df["CUSTOMER_ID"].astype(str)))
        self.drift_date = (df["TX_DATETIME"].min().normalize() + pd.Timedelta(days=drift_day)).date()
        self.day: str | None = None  # the event day being published
        self._scored: dict[str, dict] = {}
        self._label_published: set[str] = set()
        self.rows: list[tuple[str, str, float, int]] = []  # (event day, model version, score, label)
        self._lock = threading.Lock()
        self._lines = (self.dir / "scores.jsonl").open("a", encoding="utf-8")

    # -- the publisher's side
    def on_transaction(self, event) -> None:
        self.day = event.event_time.date().isoformat()

    def on_label(self, event) -> None:
        with self._lock:
            tid = event.transaction_id
            self._label_published.add(tid)
            line = self._scored.pop(tid, None)
            if line is not None:
                self._write({**line, "label": self.truth[tid]})

    # -- the monitor's side
    def on_score(self, body: dict) -> None:
        tid = body["transaction_id"]
        label = self.truth.get(tid)
        if label is None:  # warm-up transactions
            return
        line = {"transaction_id": tid, "event_time": body["event_time"], "score": body["score"],
                "model_version": body["model_version"], "customer_id": self.cards[tid]}
        with self._lock:
            self.rows.append((str(body["event_time"])[:10], body["model_version"], float(body["score"]), label))
            if tid in self._label_published:
                line["label"] = label
            else:
                self._scored[tid] = line
            self._write(line)

    def _write(self, line: dict) -> None:
        self._lines.write(json.dumps(line) + "\n")
        self._lines.flush()

    def close(self) -> None:
        self._lines.close()

    # -- the summary
    def phases(self, first_version: str | None, promoted: str | None) -> dict:
        """The stream's AP as served: before the drift day, from it while the first model served, and
        what the promoted model served."""
        from models.evaluation import average_precision

        with self._lock:
            rows = pd.DataFrame(self.rows, columns=["day", "version", "score", "label"])
        drift = self.drift_date.isoformat()
        parts = {"before_drift": rows[rows["day"] < drift],
                 "after_drift_first_model": rows[(rows["day"] >= drift) & (rows["version"] == first_version)],
                 "after_promotion": rows[rows["version"] == promoted] if promoted else rows.iloc[:0]}
        out = {}
        for name, part in parts.items():
            y = part["label"].to_numpy()
            ap = average_precision(y, part["score"].to_numpy()) if 0 < y.sum() < len(y) else None
            out[name] = {"transactions": len(part), "frauds": int(y.sum()),
                         "average_precision": None if ap is None else round(float(ap), 3),
                         "days": [part["day"].min(), part["day"].max()] if len(part) else None}
        return out


def _line(event: dict, day: str | None) -> str:
    who = event["actor"].removeprefix("streamscore ")
    what = f"{event['action']} {event['version'] or ''}".strip()
    return f"[{day or '-'}] {who}: {what}: {event['reason']}"


class AuditFeed:
    """The registry's audit events written since the demo started, one line each (the loop's live story)."""

    def __init__(self, registry, since_iso: str):
        self.registry = registry
        self.since = since_iso
        self.seen: set[str] = set()
        self.story: list[dict] = []

    def poll(self, day: str | None) -> list[str]:
        lines = []
        for event in self.registry.events():
            key = f"{event['at']}{event['action']}{event['version']}"
            if event["at"] < self.since or key in self.seen:
                continue
            self.seen.add(key)
            self.story.append({"replay_day": day, "at": event["at"], "actor": event["actor"],
                               "action": event["action"], "version": event["version"], "reason": event["reason"],
                               **_evidence(event)})
            lines.append(_line(event, day))
        return lines

    def promoted(self) -> str | None:
        """The version the controller promoted and did not roll back (the last one)."""
        current = None
        for e in self.story:
            if e["actor"] == "streamscore controller" and e["action"] == "promote":
                current = e["version"]
            elif e["action"] == "rollback" and e["version"] == current:
                current = None
        return current


def _evidence(event: dict) -> dict:
    d = event.get("details") or {}
    out = {}
    if event["action"] == "gate":
        out["difference"] = d.get("difference")
        out["challenger_ap"] = (d.get("challenger") or {}).get("average_precision")
        out["champion_ap"] = (d.get("champion") or {}).get("average_precision")
    elif event["action"] in ("promote", "retire") and "shadow" in d:
        out["shadow"] = {k: d["shadow"].get(k) for k in ("events", "alert_rate")}
    elif event["action"] in ("rollback", "confirm"):
        out["live"] = d.get("live")
    elif event["action"] == "retrain":
        out["alarms"] = d.get("alarm_count")
    return out


def render_loop(section: dict, width: int = 79) -> list[str]:
    """The summary's loop lines: the story (one line per audit event), then AP per phase."""
    lines = [f"  loop: drift ({section['drift']['kind']}) from {section['drift']['date']}, "
             f"{section['drift_alarms']} drift alarm(s) seen"]
    for event in section["story"]:
        text = "    " + _line(event, event["replay_day"])
        lines.append(text if len(text) <= width else text[:width - 1] + "…")
    ap = section["average_precision"]
    parts = [f"{name.replace('_', ' ')} {v['average_precision']}" for name, v in ap.items() if v["transactions"]]
    lines.append("  loop AP as served: " + "; ".join(parts))
    return lines
