"""What the customer-context API answers: perception, at-risk, curve, recent contacts and the
customer's history (docs/api.md describes every field)."""

from __future__ import annotations

from typing import Any

from service.domain.counters import STATUS_UNRESOLVED
from service.domain.curve import perception_curve
from service.domain.policy import Policy
from service.domain.records import (
    HISTORY_CONTACTS,
    HISTORY_DAYS,
    CustomerHistory,
    CustomerState,
)
from service.domain.settle import rfc3339
from service.domain.verdicts import Verdict, derive_verdicts

RECENT_CONTACTS = 20
TREND_PERIOD = 7 * 86400.0


def customer_summary(state: CustomerState, watermark: float, policy: Policy) -> dict[str, Any]:
    """The answer for a customer whose state is held; `watermark` is their partition's."""
    verdicts = derive_verdicts(state, watermark, policy)
    curve = perception_curve(state, verdicts, watermark, policy)
    # With no record left (idle) the customer left at-risk with the `idle` alert: not at risk.
    idle = state.is_empty()
    score = round(curve.state.score, 2)
    points = curve.state.points
    earlier = [s for (t, s, _) in points if t <= watermark - TREND_PERIOD]
    reference = earlier[-1] if earlier else (points[0][1] if points else score)
    change = round(score - reference, 2)
    trend = "falling" if change <= -5 else "rising" if change >= 5 else "steady"
    contacts = sorted(state.contacts.values(), key=lambda c: c.order(), reverse=True)
    recent = []
    for c in contacts[:RECENT_CONTACTS]:
        v = verdicts[c.contact_id]
        emitted = state.emitted.get(c.contact_id)
        recent.append({
            "contact_id": c.contact_id,
            "occurred_at": c.occurred_at,
            "queue": c.queue,
            "channel": c.channel,
            "outcome": c.outcome,
            "agent_id": c.agent,
            "reason": c.reason,
            "is_repeat": v.is_repeat,
            "repeat_of": v.repeat_of,
            "transfers": v.transfers,
            "resolution": v.resolution,
            "resolution_reasons": list(v.reasons),
            "version": emitted.version if emitted else None,
        })
    return {
        "customer_id": state.customer_id,
        "watermark": rfc3339(watermark),
        "perception": {
            "score": score,
            "trend": trend,
            "change_7d": change,
            "at_risk": curve.state.at_risk and not idle,
            "causes": curve.causes,
            "points": [{"at": rfc3339(t), "score": round(s, 2), "cause": cause}
                       for (t, s, cause) in points],
        },
        "open_contacts": sum(1 for v in verdicts.values() if v.resolution == "pending"),
        # More contacts in its window than CX_MAX_CONTACTS_PER_CUSTOMER: a placeholder id, a
        # test line or a bot; its further contacts are counted as unidentified callers'.
        "noisy": state.noisy,
        "recent_contacts": recent,
        "detail": "summary" if idle else "recent",
        "history": history_view(state, verdicts, watermark),
        "policy_version": policy.version,
    }


_NAMES = {1: "pending", 2: "resolved", 3: "unresolved"}  # counters.STATUS_*


def history_view(state: CustomerState, verdicts: dict[str, Verdict], watermark: float
                 ) -> dict[str, Any]:
    """The history: the contacts dropped from the state (CustomerHistory) and those held."""
    h = state.history or CustomerHistory()
    oldest_day = int(watermark // 86400) - HISTORY_DAYS + 1
    contacts = sum(n for day, n, _ in h.days if day >= oldest_day)
    unresolved = sum(u for day, _, u in h.days if day >= oldest_day)
    times = [c.t for c in state.contacts.values()]
    if h.first is not None and h.last is not None:
        times += [h.first, h.last]
    latest: list[tuple[float, str, str, str, str, int]] = [
        (t, cid, queue, channel, outcome, status)
        for cid, t, queue, channel, outcome, status in h.contacts]
    for c in state.contacts.values():
        status = verdicts[c.contact_id].status
        if int(c.t // 86400) >= oldest_day:
            contacts += 1
            unresolved += status == STATUS_UNRESOLVED
        latest.append((c.t, c.contact_id, c.queue, c.channel, c.outcome, status))
    latest.sort(key=lambda x: (x[0], x[1]), reverse=True)

    def alert(entry: list[Any] | None) -> dict[str, Any] | None:
        if entry is None:
            return None
        at, score, drop, causes = entry
        return {"at": rfc3339(at), "score": score, "drop": drop, "causes": list(causes)}

    return {
        "first_contact_at": rfc3339(min(times)) if times else None,
        "last_contact_at": rfc3339(max(times)) if times else None,
        "days": HISTORY_DAYS,
        "contacts": contacts,
        "unresolved": int(unresolved),
        "last_contacts": [
            {"contact_id": cid, "occurred_at": rfc3339(t), "queue": queue, "channel": channel,
             "outcome": outcome, "resolution": _NAMES.get(status)}
            for t, cid, queue, channel, outcome, status in latest[:HISTORY_CONTACTS]],
        "last_at_risk": None if h.entered is None else {
            "entered": alert(h.entered), "left": alert(h.left)},
    }
