"""The cost of contacts and of repeats (docs/metrics-definitions.md, "Cost of contacts").

Prices come from CX_CONTACT_COSTS: the cost of one handled contact per channel, optionally per
queue (a queue's price overrides its channel's). Money is kept exact: a contact's price is an
integer number of thousandths of the currency unit, stamped on the contact when it is counted,
so hour counters sum exactly; the figures derived from them (cost per resolved issue, avoidable
cost) are exact fractions rounded half to even to the thousandth only when shown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from service.domain.events import CHANNELS

MINOR = 1000  # counters keep money in thousandths of the currency unit
MAX_PRICE = Decimal(1_000_000)  # per contact, in currency units
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_THOUSANDTH = Decimal("0.001")


@dataclass(frozen=True, slots=True)
class ContactCosts:
    """What one handled contact costs, in thousandths of `currency`."""

    currency: str
    channel: Mapping[str, int] = field(default_factory=dict)
    queue: Mapping[str, int] = field(default_factory=dict)

    def price(self, queue: str, channel: str) -> int:
        """The price of a handled contact of this queue and channel (0 when neither is priced)."""
        found = self.queue.get(queue)
        if found is not None:
            return found
        return self.channel.get(channel, 0)


def _price(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    amount = Decimal(value)
    if not amount.is_finite() or not Decimal(0) <= amount <= MAX_PRICE:
        raise ValueError(f"{where}: expected 0 to {MAX_PRICE}, got {value}")
    minor = amount * MINOR
    if minor != minor.to_integral_value():
        raise ValueError(f"{where}: at most 3 decimals, got {value}")
    return int(minor)


def parse_costs(text: str) -> ContactCosts | None:
    """CX_CONTACT_COSTS: empty for none, else JSON such as
    `{"currency": "USD", "channel": {"voice": 6.5, "chat": 3.2}, "queue": {"billing": 7.9}}`.
    Raises ValueError naming what is wrong."""
    if not text.strip():
        return None
    try:
        data = json.loads(text, parse_float=Decimal)
    except (ValueError, InvalidOperation) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with currency, channel and queue")
    unknown = set(data) - {"currency", "channel", "queue"}
    if unknown:
        raise ValueError(f"unknown key(s): {', '.join(sorted(unknown))}")
    currency = data.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise ValueError(f"'currency' must be an ISO 4217 code such as USD, got {currency!r}")
    prices: dict[str, dict[str, int]] = {}
    for kind in ("channel", "queue"):
        given = data.get(kind, {})
        if not isinstance(given, dict):
            raise ValueError(f"'{kind}' must be an object of prices")
        for name, value in given.items():
            if kind == "channel" and name not in CHANNELS:
                raise ValueError(f"unknown channel {name!r} (one of {', '.join(CHANNELS)})")
            if not 1 <= len(name) <= 128:
                raise ValueError(f"queue names are 1 to 128 characters, got {name!r}")
            prices.setdefault(kind, {})[name] = _price(f"{kind} {name!r}", value)
    if not prices:
        raise ValueError("give at least one price under 'channel' or 'queue'")
    return ContactCosts(currency, prices.get("channel", {}), prices.get("queue", {}))


def money(minor: int | Fraction) -> float:
    """Thousandths as currency units, rounded half to even to the thousandth."""
    exact = Decimal(minor.numerator) / Decimal(minor.denominator) / MINOR \
        if isinstance(minor, Fraction) else Decimal(minor) / MINOR
    return float(exact.quantize(_THOUSANDTH, rounding=ROUND_HALF_EVEN))


def per_resolution(settled_cost: int, resolved: int) -> Fraction | None:
    """Cost of the settled contacts (resolved or unresolved) per resolved issue."""
    return None if resolved <= 0 else Fraction(settled_cost, resolved)


def avoidable(settled_cost: int, resolved: int, unresolved: int, target: float) -> Fraction:
    """What the settled contacts cost above what the same resolved issues would have cost at
    FCR `target`: at the target, R resolved issues take R / target contacts at the same average
    cost per contact; 0 when FCR is at or above the target."""
    settled = resolved + unresolved
    if settled <= 0 or target <= 0:
        return Fraction(0)
    at_target = Fraction(settled_cost) * resolved / (settled * Fraction(str(target)))
    return max(Fraction(0), settled_cost - at_target)


def cost_figures(counts: Mapping[str, int], target: float) -> dict[str, float | None]:
    """The cost figures of one dimension over a range, from its summed counters."""
    get = counts.get
    resolved, unresolved = get("resolved", 0), get("unresolved", 0)
    settled_cost = get("settled_cost", 0)
    each = per_resolution(settled_cost, resolved)
    return {
        "contact_cost": money(get("cost", 0)),
        "repeat_cost": money(get("repeat_cost", 0)),
        "settled_cost": money(settled_cost),
        "cost_per_resolution": None if each is None else money(each),
        "avoidable_cost": money(avoidable(settled_cost, resolved, unresolved, target)),
    }
