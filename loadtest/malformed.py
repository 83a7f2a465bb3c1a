"""A corpus of malformed events, and what the job's stages make of each (issue 15's table).

Each case is a short sequence of Pub/Sub messages ``(topic, data, attributes)`` — usually a
valid transaction before and after the bad one, sometimes the bad one twice (so it is
dead-lettered by a later stage as a duplicate). :func:`run_case` runs the case through the
job's parse and feature stages (``ParsePubsubFn`` + ``StreamFeatures``) on the local
streaming runner and reports what came out: featurised, dead-lettered (stage and reason),
silently lost, or the pipeline died. Only APIs that predate issue 15 are used, so the same
script measures the code before and after::

    PYTHONPATH=. python -m loadtest.malformed            # this checkout
    PYTHONPATH=/path/to/old/checkout:. python -m loadtest.malformed --only-table

Accounting per case: every transaction-topic message is featurised or dead-lettered
(``in == featurised + dead``); a label must be applied silently only when its transaction
is known, else dead-lettered when it ages out.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

TX = "streamscore.transaction.v1"
LABEL = "streamscore.label.v1"
_T = "2018-04-02T00:00:%02dZ"


def _tx(i: int, **raw: str) -> bytes:
    """A transaction's JSON text with fields given as raw JSON fragments (so anything can be injected)."""
    fields = {"transaction_id": f'"{i}"', "event_time": f'"{_T % i}"', "customer_id": '"c1"',
              "terminal_id": '"t1"', "amount": "10.5"}
    fields.update(raw)
    return ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items() if v is not None) + "}").encode()


def _attrs(i: int, schema: str = TX) -> dict[str, str]:
    return {"event_time": _T % i, "schema": schema}


@dataclass
class Case:
    name: str
    messages: list[tuple[str, bytes, dict]]  # (topic schema, data, attributes)
    row: str = ""  # the table row it re-measures, if any
    notes: list[str] = field(default_factory=list)


def _single(name: str, data: bytes, attrs: dict | None = None, row: str = "", twice: bool = False) -> Case:
    bad = (TX, data, attrs if attrs is not None else _attrs(5))
    messages = [(TX, _tx(1), _attrs(1)), bad] + ([bad] if twice else []) + [(TX, _tx(9), _attrs(9))]
    return Case(name, messages, row)


def corpus() -> list[Case]:
    cases = [
        _single("amount 1e308", _tx(5, amount="1e308"), row="amount: 1e308"),
        _single("customer_id lone surrogate", _tx(5, customer_id='"\\ud800"'), row="customer_id lone surrogate"),
        _single("unknown field lone surrogate, duplicated", _tx(5, note='"\\ud800"'), twice=True,
                row="lone surrogate in an unknown field, then dead-lettered"),
        _single("unknown field nested 300 deep, duplicated", _tx(5, note="[" * 300 + "]" * 300), twice=True,
                row="unknown field nested 300 deep, then dead-lettered"),
        _single("amount 400-digit integer", _tx(5, amount="1" * 400), row="400-/5000-digit integer amount"),
        _single("amount 5000-digit integer", _tx(5, amount="1" * 5000), row="400-/5000-digit integer amount"),
        _single("UTF-16 with BOM", "\ufeff".encode("utf-16")[:2] + _tx(5).decode().encode("utf-16-le"),
                row="UTF-16 with BOM, UTF-8 with BOM"),
        _single("UTF-8 with BOM", b"\xef\xbb\xbf" + _tx(5), row="UTF-16 with BOM, UTF-8 with BOM"),
        _single("event_time trailing newline", _tx(5, event_time=f'"{_T % 5}\\n"'), {"schema": TX},
                row="event_time with a trailing newline"),
        _single("label on the transactions topic",
                b'{"transaction_id":"5","label":1,"event_time":"2018-04-02T00:00:01Z","customer_id":"c1",'
                b'"terminal_id":"t1","reported_at":"2018-04-03T00:00:00Z"}', _attrs(1, LABEL),
                row="a label published on the transactions topic"),
        _single("duplicate JSON keys", _tx(5)[:-1] + b',"amount":99999}', row="duplicate JSON keys"),
    ]
    ghost = (b'{"transaction_id":"ghost","label":1,"event_time":"2018-04-02T00:00:05Z","customer_id":"c1",'
             b'"terminal_id":"t1","reported_at":"2018-04-03T00:00:00Z"}')
    later = [(TX, _tx(i, event_time='"2018-06-02T00:00:%02dZ"' % i), {"schema": TX}) for i in (20, 21)]
    cases.append(Case("label whose transaction never comes",
                      [(TX, _tx(1), _attrs(1)), (LABEL, ghost, _attrs(5, LABEL))] + later,
                      row="label for a transaction that never comes"))
    # more of our own: every field x a set of bad values
    nasty = {
        "NaN": "NaN", "Infinity": "Infinity", "-1": "-1", "1e11+": "100000000000.5", "string": '"12"',
        "null": "null", "true": "true", "object": '{"v":1}', "array": "[1]", "1e400": "1e400",
        "2**64": "18446744073709551616", "lone low surrogate": '"\\udfff"', "control char": '"a\\u0001"',
        "NUL": '"\\u0000"', "zero-width": '"\\u200b"', "empty": '""', "spaces": '"  "', "long": '"' + "x" * 300 + '"',
        "deep": "[" * 40 + "]" * 40, "trailing newline": f'"{_T % 5}\\n"', "bad date": '"2018-02-30T00:00:00Z"',
        "no zone": '"2018-04-02T00:00:05"', "arabic digits": '"\u0662\u0660\u0661\u0668-04-02T00:00:05Z"',
    }
    for name in ("transaction_id", "customer_id", "terminal_id", "amount", "event_time"):
        for label, fragment in nasty.items():
            cases.append(_single(f"{name}: {label}", _tx(5, **{name: fragment}), {"schema": TX}))
    cases += [
        _single("missing amount", _tx(5, amount=None)),
        _single("not JSON", b"{not json"), _single("empty", b""), _single("array", b"[1,2]"),
        _single("invalid UTF-8", b'{"a":"\xff"}'), _single("encoded surrogate", b'{"a":"\xed\xa0\x80"}'),
        _single("nested 2000 deep", b"[" * 2000 + b"]" * 2000),
        _single("truncated", _tx(5)[:-7]), _single("huge message", _tx(5, note='"' + "x" * 70_000 + '"')),
        _single("unknown schema", _tx(5), {"schema": "streamscore.other.v9"}),
        _single("attribute time differs", _tx(5), {"schema": TX, "event_time": _T % 6}),
        _single("replayed transaction (duplicate delivery)", _tx(5), twice=True),
        _single("surrogate key, duplicated", _tx(5, **{"\\ud800": "1"}), twice=True),
        _single("deep 200, duplicated", _tx(5, note="[" * 200 + "]" * 200), twice=True),
        _single("NaN in an unknown field, duplicated", _tx(5, note="NaN"), twice=True),
        _single("2**70 in an unknown field, duplicated", _tx(5, note=str(2**70)), twice=True),
    ]
    return cases


def _stages():
    import apache_beam as beam

    from streaming.features.spec import DEFAULT_SPEC
    from streaming.features.stream import DEAD_LETTER, StreamFeatures
    try:
        from streaming.job.pipeline import ParsePubsubFn
    except ImportError:  # a checkout from before the re-layout into sub-packages (the "then")
        from streaming.job import ParsePubsubFn

    class ParseAndFeaturize(beam.PTransform):
        """(topic schema, PubsubMessage) → the job's parse and feature stages; features and dead letters."""

        def expand(self, tagged):
            events, dead = [], []
            for schema, name in ((TX, "Transactions"), (LABEL, "Labels")):
                parsed = (tagged
                          | f"Only{name}" >> beam.Filter(lambda e, s=schema: e[0] == s)
                          | f"Message{name}" >> beam.Map(lambda e: e[1])
                          | f"Parse{name}" >> beam.ParDo(ParsePubsubFn(schema, keyed=True))
                          .with_outputs(DEAD_LETTER, main="events"))
                events.append(parsed.events)
                dead.append(parsed[DEAD_LETTER])
            featured = (events | "MergeEvents" >> beam.Flatten()
                        | StreamFeatures(DEFAULT_SPEC, 1.0, keyed=True))
            dead.append(featured["dead_letter"])
            return {"features": featured["features"], "dead_letter": dead | "MergeDead" >> beam.Flatten()}

    return ParseAndFeaturize


def run_case(case: Case) -> dict:
    """What the job's stages make of one case (never raises: a dying pipeline is a result)."""
    from apache_beam.io.gcp.pubsub import PubsubMessage

    try:
        from streaming.runner.testing import replay
    except ImportError:  # before the re-layout
        from streaming.beam_testing import replay

    elements = [(schema, PubsubMessage(data, attrs)) for schema, data, attrs in case.messages]
    n_tx = sum(1 for schema, _, _ in case.messages if schema == TX)
    try:
        out = replay([elements], _stages()(), timestamp_of=lambda e: 1.5e9)
    except Exception as exc:  # the pipeline died: the "before"
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return {"case": case.name, "row": case.row, "in": len(elements), "tx_in": n_tx, "outcome": "pipeline died",
                "detail": f"{type(exc).__name__}: {first[:160]}"}
    dead = out["dead_letter"]
    features = out["features"]
    ids = sorted(f.transaction.transaction_id for f in features)
    reasons = [f"[{d.stage}] {d.error}"[:160] for d in dead]
    tx_dead = sum(1 for d in dead if d.stage != "label")
    lost = n_tx - len(features) - tx_dead
    outcome = "dead-lettered" if dead else "featurised"
    if lost > 0:
        outcome = "lost silently"
    if case.messages and any(schema == LABEL for schema, _, _ in case.messages) and not dead:
        outcome = "label: no output"
    return {"case": case.name, "row": case.row, "in": len(elements), "tx_in": n_tx, "featurised": ids,
            "dead": reasons, "lost": lost, "outcome": outcome}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only-table", action="store_true", help="only the cases that re-measure the issue's table")
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    cases = [c for c in corpus() if c.row or not args.only_table]
    totals = {"cases": 0, "messages": 0, "pipeline died": 0, "lost": 0, "dead letters": 0, "featurised": 0}
    for case in cases:
        result = run_case(case)
        totals["cases"] += 1
        totals["messages"] += result["in"]
        totals["pipeline died"] += result["outcome"] == "pipeline died"
        totals["lost"] += max(result.get("lost", 0), 0)
        totals["dead letters"] += len(result.get("dead", []))
        totals["featurised"] += len(result.get("featurised", []))
        if args.json:
            print(json.dumps(result, ensure_ascii=True))
        else:
            detail = result.get("detail") or "; ".join(result.get("dead", [])) or f"featurised {result['featurised']}"
            print(f"{case.name:<45} {result['outcome']:<14} {detail}".encode("ascii", "backslashreplace").decode())
        sys.stdout.flush()
    print(json.dumps(totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
