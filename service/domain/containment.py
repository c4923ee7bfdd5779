"""Failed self-service and abandoned calls: contacts outside FCR where repeats start.

A self-service contact (IVR, bot) of an identified customer is a **failed containment** when a
handled contact of the same customer follows it within the repeat window of its queue; an
abandoned contact of an identified customer is an **abandon callback** when any contact of the
same customer follows it within that window. "Follows" is the order of contacts (event time,
then contact_id); "within" is `later.t - contact.t <= repeat_window`. Both are counted in the
hour, queue and channel of the self-service or abandoned contact. FCR is unchanged: neither
kind of contact is in its population.

Like FCR, the flag is derived again from the customer's contacts whenever they change, so a
late or out-of-order contact sets it (or, when a correction moves or changes the follower,
clears it) and the counters are corrected.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping

from service.domain.policy import Policy
from service.domain.records import ContactRecord

SELF_SERVICE = "self_service"
ABANDONED = "abandoned"
FOLLOWED_OUTCOMES = (SELF_SERVICE, ABANDONED)


def is_followed(c: ContactRecord, handled: list[tuple[float, str]],
                everyone: list[tuple[float, str]], policy: Policy) -> bool:
    """Whether the self-service or abandoned contact `c` is followed within its queue's repeat
    window: by a handled contact (self-service) or by any contact (abandoned). `handled` and
    `everyone` are the customer's (t, contact_id) keys, sorted; the nearest later one is the
    only one to check."""
    if c.outcome == SELF_SERVICE:
        pool = handled
    elif c.outcome == ABANDONED:
        pool = everyone
    else:
        return False
    i = bisect_right(pool, (c.t, c.contact_id))  # past `c` itself when it is in `pool`
    return i < len(pool) and pool[i][0] - c.t <= policy.for_queue(c.queue).repeat_window


def containment_figures(counts: Mapping[str, int]) -> dict[str, int | float | None]:
    """The containment figures of one dimension's summed counters (docs/metrics-definitions)."""
    get = counts.get
    ss, failed = get("self_service_identified", 0), get("failed_containment", 0)
    ab, callbacks = get("abandoned_identified", 0), get("abandon_callbacks", 0)
    return {
        "self_service": get("self_service", 0),
        "self_service_identified": ss,
        "failed_containment": failed,
        "failed_containment_ratio": None if ss <= 0 else failed / ss,
        "abandoned": get("abandoned", 0),
        "abandoned_identified": ab,
        "abandon_callbacks": callbacks,
        "abandon_callback_ratio": None if ab <= 0 else callbacks / ab,
    }


def containment_kpis(counts: Mapping[str, int]) -> dict[str, float | None]:
    """The two rates as gauge KPIs (business_metrics): None when undefined."""
    figures = containment_figures(counts)
    failed, callback = figures["failed_containment_ratio"], figures["abandon_callback_ratio"]
    return {"failed_containment": None if failed is None else float(failed),
            "abandon_callback": None if callback is None else float(callback)}
