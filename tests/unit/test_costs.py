"""Costs, table by table: CX_CONTACT_COSTS, prices, and each cost figure's definition
(docs/metrics-definitions.md, "Cost of contacts and of repeats")."""

from __future__ import annotations

from fractions import Fraction

import pytest

from service.config import ConfigError, load_settings
from service.domain.costs import (
    ContactCosts,
    avoidable,
    cost_figures,
    money,
    parse_costs,
    per_resolution,
)

EXAMPLE = ('{"currency": "USD", "channel": {"voice": 6.5, "chat": 3.2, "email": 2.1}, '
           '"queue": {"billing": 7.9}}')


def test_the_example_of_the_docs() -> None:
    costs = parse_costs(EXAMPLE)
    assert costs == ContactCosts("USD", {"voice": 6500, "chat": 3200, "email": 2100},
                                 {"billing": 7900})


@pytest.mark.parametrize(("queue", "channel", "price"), [
    ("billing", "voice", 7900),  # the queue's price overrides the channel's
    ("billing", "sms", 7900),
    ("tech", "chat", 3200),
    ("tech", "sms", 0),  # neither priced
])
def test_price(queue: str, channel: str, price: int) -> None:
    costs = parse_costs(EXAMPLE)
    assert costs is not None
    assert costs.price(queue, channel) == price


@pytest.mark.parametrize(("text", "thousandths"), [
    ('{"currency": "EUR", "channel": {"voice": 0.001}}', 1),
    ('{"currency": "EUR", "channel": {"voice": 0.1}}', 100),  # exact: not 100.00000000000001
    ('{"currency": "EUR", "channel": {"voice": 12}}', 12000),
    ('{"currency": "EUR", "channel": {"voice": 0}}', 0),
    ('{"currency": "JPY", "channel": {"voice": 1000000}}', 1_000_000_000),
])
def test_prices_are_exact_thousandths(text: str, thousandths: int) -> None:
    costs = parse_costs(text)
    assert costs is not None
    assert costs.price("q", "voice") == thousandths


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not valid JSON"),
    ("[]", "JSON object"),
    ('{"currency": "usd", "channel": {"voice": 1}}', "ISO 4217"),
    ('{"channel": {"voice": 1}}', "ISO 4217"),
    ('{"currency": "USD"}', "at least one price"),
    ('{"currency": "USD", "channel": {"phone": 1}}', "unknown channel"),
    ('{"currency": "USD", "channel": {"voice": -1}}', "expected 0 to"),
    ('{"currency": "USD", "channel": {"voice": 1000001}}', "expected 0 to"),
    ('{"currency": "USD", "channel": {"voice": 1.0005}}', "at most 3 decimals"),
    ('{"currency": "USD", "channel": {"voice": "6.5"}}', "expected a number"),
    ('{"currency": "USD", "channel": {"voice": true}}', "expected a number"),
    ('{"currency": "USD", "channel": [1]}', "must be an object"),
    ('{"currency": "USD", "queue": {"": 1}}', "1 to 128"),
    ('{"currency": "USD", "channel": {"voice": 1}, "tax": 1}', "unknown key"),
    ('{"currency": "USD", "channel": {"voice": NaN}}', "expected"),
])
def test_bad_costs_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_costs(text)


def test_costs_in_the_settings() -> None:
    assert load_settings({}).contact_costs is None  # empty by default
    assert load_settings({}).max_reasons == 50
    settings = load_settings({"CX_CONTACT_COSTS": EXAMPLE, "CX_MAX_REASONS": "7"})
    assert settings.contact_costs == parse_costs(EXAMPLE)
    assert settings.max_reasons == 7
    with pytest.raises(ConfigError, match="CX_CONTACT_COSTS: unknown channel"):
        load_settings({"CX_CONTACT_COSTS": '{"currency": "USD", "channel": {"fax": 1}}'})


@pytest.mark.parametrize(("minor", "shown"), [
    (6500, 6.5), (1, 0.001), (0, 0.0), (123456789, 123456.789),
    (Fraction(1, 2), 0.0),  # half a thousandth: half to even
    (Fraction(3, 2), 0.002),
    (Fraction(10, 3), 0.003),
    (Fraction(20, 3), 0.007),
])
def test_money_rounds_half_to_even_to_the_thousandth(minor: int | Fraction,
                                                     shown: float) -> None:
    assert money(minor) == shown


@pytest.mark.parametrize(("settled_cost", "resolved", "expected"), [
    (100_000, 8, Fraction(12_500)),
    (100_000, 3, Fraction(100_000, 3)),
    (100_000, 0, None),  # no resolved issue: undefined
])
def test_cost_per_resolution(settled_cost: int, resolved: int,
                             expected: Fraction | None) -> None:
    assert per_resolution(settled_cost, resolved) == expected


@pytest.mark.parametrize(("settled_cost", "resolved", "unresolved", "target", "expected"), [
    # FCR 0.6 at target 0.8: 10 contacts cost 65; 6 resolved issues would take 7.5 contacts
    # at the same average 6.5: 48.75; avoidable 16.25
    (65_000, 6, 4, 0.8, Fraction(16_250)),
    (65_000, 8, 2, 0.8, Fraction(0)),  # at the target: nothing avoidable
    (65_000, 9, 1, 0.8, Fraction(0)),  # above it: nothing (never negative)
    (10_000, 1, 2, 0.7, Fraction(10_000) - Fraction(10_000, 3) / Fraction(7, 10)),
    (0, 0, 0, 0.8, Fraction(0)),  # nothing settled
    (30_000, 0, 3, 0.8, Fraction(30_000)),  # nothing resolved: everything is avoidable
])
def test_avoidable_cost_at_target(settled_cost: int, resolved: int, unresolved: int,
                                  target: float, expected: Fraction) -> None:
    assert avoidable(settled_cost, resolved, unresolved, target) == expected


def test_cost_figures_of_the_worked_example() -> None:
    """docs/metrics-definitions.md's worked example."""
    counts = {"cost": 70_300, "repeat_cost": 19_500, "settled_cost": 65_000, "resolved": 6,
              "unresolved": 4}
    assert cost_figures(counts, 0.8) == {
        "contact_cost": 70.3, "repeat_cost": 19.5, "settled_cost": 65.0,
        "cost_per_resolution": 10.833, "avoidable_cost": 16.25,
    }
    assert cost_figures({}, 0.8)["cost_per_resolution"] is None
