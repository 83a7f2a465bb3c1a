"""Seeded, vectorised simulator of labelled card transactions.

Reproduces the handbook's generative process (``/work/shared/specs/SIMULATOR.md``) with
numpy arrays instead of per-transaction Python loops, so the reference size (5,000
customers, 10,000 terminals, 183 days, about 1.77 million transactions) takes about half
a second (``python -m loadtest.bench_simulator``). Pure numpy/pandas, no Beam or gRPC:
the demo, the tests and the load tests all use it.

>>> df = simulate(customers=50, terminals=100, days=3, seed=1, radius=20.0)
>>> df.columns.tolist() == list(COLUMNS)
True
>>> df.TX_DATETIME.is_monotonic_increasing and df.TRANSACTION_ID.tolist() == list(range(len(df)))
True
>>> simulate(customers=50, terminals=100, days=3, seed=1, radius=20.0).equals(df)
True
"""

from __future__ import annotations

import datetime
import numbers

import numpy as np
import pandas as pd

from streaming.io.datasets import REFERENCE_COLUMNS

__all__ = ["COLUMNS", "simulate"]

COLUMNS = REFERENCE_COLUMNS  # the simulator writes exactly the reference layout

AREA = 100.0  # locations are uniform on [0, AREA) x [0, AREA)
SECONDS_PER_DAY = 86_400
TIME_MEAN, TIME_SD = 43_200.0, 20_000.0
FRAUD_AMOUNT = 220.0  # scenario 1: every amount above this is fraud
TERMINALS_PER_DAY, TERMINAL_DAYS = 2, 28  # scenario 2: compromised terminals
CUSTOMERS_PER_DAY, CUSTOMER_DAYS = 3, 14  # scenario 3: compromised cards
CARD_FRAUD_FACTOR = 5.0
#: Drift scenarios (``simulate(drift_day=..., drift_kind=...)``), from ``drift_day`` on only:
#: ``amount-shift`` multiplies every drawn amount by DRIFT_AMOUNT_FACTOR (before the fraud
#: scenarios, so scenario 1's fixed 220 threshold now catches many more amounts);
#: ``new-pattern`` is card testing, a pattern the earlier days never show: each day
#: DRIFT_CARDS_PER_DAY cards become compromised for DRIFT_CARD_DAYS days and half (integer
#: part) of their transactions in that period, chosen at random, get a small amount drawn
#: uniformly in DRIFT_TEST_AMOUNTS and are fraud (scenario 4, applied last).
DRIFT_KINDS = ("new-pattern", "amount-shift")
DRIFT_AMOUNT_FACTOR = 1.5
DRIFT_CARDS_PER_DAY, DRIFT_CARD_DAYS = 6, 7
DRIFT_TEST_AMOUNTS = (0.5, 5.0)


def simulate(
    customers: int = 5000,
    terminals: int = 10000,
    days: int = 183,
    start: str | datetime.date = "2018-04-01",
    seed: int = 0,
    radius: float = 5.0,
    drift_day: int | None = None,
    drift_kind: str = "new-pattern",
) -> pd.DataFrame:
    """Simulate ``days`` days of transactions, labelled with the three fraud scenarios.

    Returns one row per transaction in time order, with the reference columns
    ``COLUMNS``: ``TX_DATETIME`` is naive UTC (``datetime64[ns]``), amounts are rounded
    to cents, ``TRANSACTION_ID`` runs 0..n-1 in time order (ties keep generation order:
    customer, then draw). The same arguments always give an identical frame.

    ``drift_day`` (days after ``start``, 0-based) starts the ``drift_kind`` scenario of
    :data:`DRIFT_KINDS` on that day; the days before it are exactly those of the run without
    drift (the drift draws from its own random stream).
    """
    _require_int("customers", customers, 1)
    _require_int("terminals", terminals, 1)
    _require_int("days", days, 1)
    _require_int("seed", seed, 0)
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not radius > 0 or radius == np.inf:
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
    origin = _start_date(start)
    if drift_day is not None:
        _require_int("drift_day", drift_day, 0)
        if drift_day >= days:
            raise ValueError(f"drift_day must be a day of the run, 0 <= drift_day < days={days}, got {drift_day}")
        if drift_kind not in DRIFT_KINDS:
            raise ValueError(f"drift_kind must be one of {', '.join(DRIFT_KINDS)}, got {drift_kind!r}")

    # One independent stream per stage: profiles do not change when `days` does. (A fifth stream,
    # spawned after the others, leaves theirs unchanged.)
    rng_profiles, rng_tx, rng_terminals, rng_cards, rng_drift = np.random.default_rng(seed).spawn(5)

    # Profiles.
    customer_xy = rng_profiles.uniform(0.0, AREA, size=(customers, 2))
    mean_amount = rng_profiles.uniform(5.0, 100.0, size=customers)
    tx_per_day = rng_profiles.uniform(0.0, 4.0, size=customers)
    terminal_xy = rng_profiles.uniform(0.0, AREA, size=(terminals, 2))
    offsets, available = _terminals_within(customer_xy, terminal_xy, float(radius))
    n_available = np.diff(offsets)

    # Transactions, generated customer-major then day (so (customer, day) is sorted).
    counts = rng_tx.poisson(tx_per_day[:, None], size=(customers, days))
    counts[n_available == 0] = 0  # a customer with no terminal makes no transactions
    customer_day = np.repeat(np.arange(customers * days, dtype=np.int64), counts.ravel())
    time_of_day = np.trunc(rng_tx.normal(TIME_MEAN, TIME_SD, size=customer_day.size))
    kept = (time_of_day > 0) & (time_of_day < SECONDS_PER_DAY)  # dropped, not redrawn
    customer_day = customer_day[kept]
    seconds = (customer_day % days) * SECONDS_PER_DAY + time_of_day[kept].astype(np.int64)
    customer, day = np.divmod(customer_day, days)
    del time_of_day, kept

    mean = mean_amount[customer]
    amount = rng_tx.normal(mean, mean / 2.0)
    negative = np.flatnonzero(amount < 0)
    amount[negative] = rng_tx.uniform(0.0, 2.0 * mean[negative])
    if drift_day is not None and drift_kind == "amount-shift":
        amount[day >= drift_day] *= DRIFT_AMOUNT_FACTOR
    amount = np.round(amount, 2)
    del mean
    pick = rng_tx.integers(0, n_available[customer])
    terminal = available[offsets[customer] + pick]
    del pick

    # Fraud scenarios, in order; a later one overrides the scenario label.
    scenario = (amount > FRAUD_AMOUNT).astype(np.int8)
    scenario[_compromised_terminal_tx(rng_terminals, terminal, day, terminals, days)] = 2
    del day
    card_fraud = _compromised_card_tx(rng_cards, customer_day, customers, days)
    # A transaction picked on several days is multiplied each time, as in the handbook.
    times_picked = np.bincount(card_fraud, minlength=amount.size)
    amount = np.round(amount * CARD_FRAUD_FACTOR**times_picked, 2)
    scenario[card_fraud] = 3
    del card_fraud
    if drift_day is not None and drift_kind == "new-pattern":
        testing = np.unique(_compromised_card_tx(rng_drift, customer_day, customers, days, per_day=DRIFT_CARDS_PER_DAY,
                                                 window_days=DRIFT_CARD_DAYS, share=2, first_day=drift_day))
        amount[testing] = np.round(rng_drift.uniform(*DRIFT_TEST_AMOUNTS, size=testing.size), 2)
        scenario[testing] = 4
        del testing
    del customer_day

    # Time order; each column is reordered then its generation-order copy released.
    order = np.argsort(seconds, kind="stable")
    nanoseconds = seconds[order]
    del seconds
    nanoseconds *= 1_000_000_000
    nanoseconds += np.datetime64(origin, "ns").astype(np.int64)
    columns = {
        "TRANSACTION_ID": np.arange(order.size, dtype=np.int64),
        "TX_DATETIME": nanoseconds.view("datetime64[ns]"),
    }
    columns["CUSTOMER_ID"] = customer[order]
    del customer
    columns["TERMINAL_ID"] = terminal[order]
    del terminal
    columns["TX_AMOUNT"] = amount[order]
    del amount
    columns["TX_FRAUD_SCENARIO"] = scenario[order].astype(np.int64)
    del scenario, order
    columns["TX_FRAUD"] = (columns["TX_FRAUD_SCENARIO"] > 0).astype(np.int64)
    return pd.DataFrame({name: columns[name] for name in COLUMNS}, copy=False)


def _terminals_within(customer_xy, terminal_xy, radius):
    """CSR lists of the terminals strictly within ``radius`` of each customer.

    Returns ``(offsets, flat)``: customer ``c`` may use ``flat[offsets[c]:offsets[c+1]]``
    (ascending terminal ids). Terminals are bucketed on a grid of cells of side >= radius,
    so each customer only measures the terminals in its 3 x 3 block of cells.
    """
    cell_size = max(radius, AREA / 2**20)  # cells >= radius: a 3 x 3 block covers the disc
    cells_per_side = max(1, int(np.ceil(AREA / cell_size)))
    terminal_cell = _cells(terminal_xy, cell_size, cells_per_side)
    terminal_cell = terminal_cell[:, 0] * cells_per_side + terminal_cell[:, 1]
    by_cell = np.argsort(terminal_cell, kind="stable")
    sorted_cells = terminal_cell[by_cell]

    cx, cy = _cells(customer_xy, cell_size, cells_per_side).T
    dx, dy = np.divmod(np.arange(9), 3)
    nx, ny = cx[:, None] + dx - 1, cy[:, None] + dy - 1  # (customers, 9) neighbour cells
    valid = (nx >= 0) & (nx < cells_per_side) & (ny >= 0) & (ny < cells_per_side)
    query = np.where(valid, nx * cells_per_side + ny, -1)
    lo = np.searchsorted(sorted_cells, query, side="left")
    n = np.where(valid, np.searchsorted(sorted_cells, query, side="right") - lo, 0).ravel()

    owner = np.repeat(np.arange(customer_xy.shape[0]), 9)
    cand_owner, cand_pos = _expand_ranges(owner, lo.ravel(), n)
    cand_terminal = by_cell[cand_pos]
    d2 = np.sum((customer_xy[cand_owner] - terminal_xy[cand_terminal]) ** 2, axis=1)
    inside = np.sqrt(d2) < radius  # the handbook's strict test, on the Euclidean distance
    owner_kept, terminal_kept = cand_owner[inside], cand_terminal[inside]
    by_owner = np.lexsort((terminal_kept, owner_kept))
    counts = np.bincount(owner_kept, minlength=customer_xy.shape[0])
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return offsets, terminal_kept[by_owner].astype(np.int64)


def _cells(xy, size, cells_per_side):
    return np.minimum(np.floor_divide(xy, size).astype(np.int64), cells_per_side - 1)


def _expand_ranges(segment, start, length):
    """Flatten ranges ``[start[i], start[i] + length[i])``: (segment of each, position)."""
    seg = np.repeat(segment, length)
    ends = np.cumsum(length)
    within = np.arange(ends[-1] if ends.size else 0) - np.repeat(ends - length, length)
    return seg, np.repeat(start, length) + within


def _distinct_per_day(rng, population, k, days):
    """``k`` distinct ids from ``range(population)`` for each day: Floyd's algorithm,
    vectorised over days (uniform over k-subsets, like ``random.sample``)."""
    k = min(k, population)
    chosen = np.empty((days, k), dtype=np.int64)
    for i, j in enumerate(range(population - k, population)):
        t = rng.integers(0, j + 1, size=days)
        taken = (chosen[:, :i] == t[:, None]).any(axis=1)
        chosen[:, i] = np.where(taken, j, t)
    return chosen


def _compromised_terminal_tx(rng, terminal, day, terminals, days):
    """Mask of transactions at a terminal compromised on their day (scenario 2)."""
    picks = _distinct_per_day(rng, terminals, TERMINALS_PER_DAY, days)
    first_day = np.repeat(np.arange(days), picks.shape[1])
    compromised, row = np.unique(picks.ravel(), return_inverse=True)
    # Per compromised terminal and day: how many compromise windows cover that day.
    cover = np.zeros((compromised.size, days + 1), dtype=np.int32)
    np.add.at(cover, (row, first_day), 1)
    np.add.at(cover, (row, np.minimum(first_day + TERMINAL_DAYS, days)), -1)
    active = np.cumsum(cover, axis=1)[:, :days] > 0
    slot = np.full(terminals, -1, dtype=np.int64)
    slot[compromised] = np.arange(compromised.size)
    s = slot[terminal]
    hit = s >= 0
    hit[hit] = active[s[hit], day[hit]]
    return hit


def _compromised_card_tx(rng, customer_day, customers, days, per_day=CUSTOMERS_PER_DAY, window_days=CUSTOMER_DAYS,
                         share=3, first_day=0):
    """Indices of the card-fraud transactions (scenario 3), one entry per selection.

    ``customer_day`` (= customer * days + day) must be sorted. For each compromise
    (day d, customer c), int(n / 3) of c's n transactions in days [d, d + 14) are drawn
    without replacement; windows of the same card may overlap, so an index can repeat.
    (``per_day``, ``window_days``, ``share`` and ``first_day``, the first day with compromises,
    give the drift scenario's card testing.)
    """
    picks = _distinct_per_day(rng, customers, per_day, days - first_day)
    first_day = np.repeat(np.arange(first_day, days), picks.shape[1])
    c = picks.ravel()
    lo = np.searchsorted(customer_day, c * days + first_day, side="left")
    last_day = np.minimum(first_day + window_days, days)  # exclusive
    hi = np.searchsorted(customer_day, c * days + last_day, side="left")
    n = hi - lo
    window, position = _expand_ranges(np.arange(n.size), lo, n)
    # Random keys, sorted within each window: the first int(n / 3) form a uniform sample.
    order = np.lexsort((rng.random(position.size), window))
    rank = np.arange(position.size) - np.repeat(np.cumsum(n) - n, n)
    return position[order][rank < (n // share)[window]]


def _require_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _start_date(start):
    if isinstance(start, datetime.datetime):
        if start.tzinfo is None and start.time() == datetime.time():
            return start.date()
    elif isinstance(start, datetime.date):
        return start
    elif isinstance(start, str):
        try:
            return datetime.date.fromisoformat(start)
        except ValueError:
            pass
    raise ValueError(f"start must be a date (datetime.date or 'YYYY-MM-DD'), got {start!r}")
