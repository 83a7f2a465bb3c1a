"""FeatureSpec: names in the reference order, a hash that tracks the definition, validation."""

import dataclasses
import doctest
import pickle

import pytest

from streaming.features import spec as spec_module
from streaming.features.spec import DEFAULT_SPEC, FeatureSpec

REFERENCE_NAMES = (
    "TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT",
    "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_7DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_30DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
    "TERMINAL_ID_NB_TX_1DAY_WINDOW", "TERMINAL_ID_RISK_1DAY_WINDOW",
    "TERMINAL_ID_NB_TX_7DAY_WINDOW", "TERMINAL_ID_RISK_7DAY_WINDOW",
    "TERMINAL_ID_NB_TX_30DAY_WINDOW", "TERMINAL_ID_RISK_30DAY_WINDOW",
)


def test_default_names_are_the_reference_columns_in_order():
    assert DEFAULT_SPEC == FeatureSpec()
    assert DEFAULT_SPEC.names == REFERENCE_NAMES
    assert DEFAULT_SPEC.customer_names + DEFAULT_SPEC.terminal_names == REFERENCE_NAMES[3:]


def test_names_follow_the_windows():
    spec = FeatureSpec(customer_windows=(2,), terminal_windows=(3, 14), delay_days=0)
    assert spec.names == (
        "TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT",
        "CUSTOMER_ID_NB_TX_2DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_2DAY_WINDOW",
        "TERMINAL_ID_NB_TX_3DAY_WINDOW", "TERMINAL_ID_RISK_3DAY_WINDOW",
        "TERMINAL_ID_NB_TX_14DAY_WINDOW", "TERMINAL_ID_RISK_14DAY_WINDOW",
    )


def test_hash_is_stable_hex_sha256_and_equal_for_equal_specs():
    h = DEFAULT_SPEC.spec_hash
    assert len(h) == 64 and int(h, 16) >= 0
    assert FeatureSpec([1, 7, 30], (1, 7, 30), 7).spec_hash == h  # lists are stored as tuples
    assert pickle.loads(pickle.dumps(DEFAULT_SPEC)).spec_hash == h


@pytest.mark.parametrize("changed", [
    FeatureSpec(customer_windows=(1, 7, 31)),
    FeatureSpec(customer_windows=(1, 7)),
    FeatureSpec(terminal_windows=(1, 7, 29)),
    FeatureSpec(delay_days=6),
    FeatureSpec(delay_days=0),
])
def test_any_parameter_change_changes_the_hash(changed):
    assert changed.spec_hash != DEFAULT_SPEC.spec_hash


def test_swapping_customer_and_terminal_windows_changes_the_hash():
    a = FeatureSpec(customer_windows=(1, 2), terminal_windows=(3,))
    b = FeatureSpec(customer_windows=(3,), terminal_windows=(1, 2))
    assert a.spec_hash != b.spec_hash


def test_definition_version_and_semantics_are_part_of_the_hash(monkeypatch):
    before = FeatureSpec().spec_hash
    monkeypatch.setattr(spec_module, "DEFINITION_VERSION", "streamscore.features/999")
    assert FeatureSpec().spec_hash != before
    monkeypatch.undo()
    monkeypatch.setitem(spec_module.SEMANTICS, "night", "hour 0..5")
    assert FeatureSpec().spec_hash != before


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_SPEC.delay_days = 3


@pytest.mark.parametrize("kwargs, message", [
    ({"customer_windows": (0, 7)}, "customer_windows entries must be a positive integer"),
    ({"customer_windows": (-1,)}, "customer_windows entries must be a positive integer"),
    ({"customer_windows": (1.5,)}, "customer_windows entries must be a positive integer"),
    ({"customer_windows": (True,)}, "customer_windows entries must be a positive integer"),
    ({"customer_windows": ("7",)}, "customer_windows entries must be a positive integer"),
    ({"customer_windows": ()}, "customer_windows must name at least one window"),
    ({"customer_windows": 7}, "customer_windows must be a sequence"),
    ({"customer_windows": "17"}, "customer_windows must be a sequence"),
    ({"terminal_windows": (7, 1)}, "terminal_windows must be strictly increasing"),
    ({"terminal_windows": (1, 1)}, "terminal_windows must be strictly increasing"),
    ({"delay_days": -1}, "delay_days must be an integer number of days >= 0"),
    ({"delay_days": 7.0}, "delay_days must be an integer number of days >= 0"),
    ({"delay_days": None}, "delay_days must be an integer number of days >= 0"),
])
def test_bad_arguments_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureSpec(**kwargs)


def test_horizons():
    day = 86_400 * 10**9
    assert DEFAULT_SPEC.customer_horizon_ns == 30 * day
    assert DEFAULT_SPEC.terminal_horizon_ns == 37 * day


def test_docstring_examples_run():
    result = doctest.testmod(spec_module)
    assert result.attempted > 0 and result.failed == 0
