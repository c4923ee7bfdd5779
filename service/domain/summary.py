"""What the customer-context API answers: perception, at-risk, curve and recent contacts."""

from __future__ import annotations

from typing import Any

from service.domain.engine import derive_verdicts, perception_curve, rfc3339
from service.domain.policy import Policy
from service.domain.records import CustomerState

RECENT_CONTACTS = 20
TREND_PERIOD = 7 * 86400.0


def customer_summary(state: CustomerState, watermark: float, policy: Policy) -> dict[str, Any]:
    verdicts = derive_verdicts(state, watermark, policy)
    curve = perception_curve(state, verdicts, watermark, policy)
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
            "at_risk": curve.state.at_risk,
            "causes": curve.causes,
            "points": [{"at": rfc3339(t), "score": round(s, 2), "cause": cause}
                       for (t, s, cause) in points],
        },
        "open_contacts": sum(1 for v in verdicts.values() if v.resolution == "pending"),
        # More contacts in its window than CX_MAX_CONTACTS_PER_CUSTOMER: a placeholder id, a
        # test line or a bot; its further contacts are counted as unidentified callers'.
        "noisy": state.noisy,
        "recent_contacts": recent,
        "policy_version": policy.version,
    }
