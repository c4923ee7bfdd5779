"""A customer's journey as the journey page draws it: every contact held, with its verdict,
transfers and survey answers, and the whole perception curve since it last started, each
point with the cause that moved it (docs/api.md#get-apiv1customerscustomer_idjourney)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from service.domain.curve import perception_curve
from service.domain.policy import Policy
from service.domain.records import CustomerState
from service.domain.settle import rfc3339
from service.domain.verdicts import derive_verdicts

MAX_JOURNEY_CONTACTS = 500
# Curve points kept for the page: one per signal, a few signals per contact.
MAX_JOURNEY_POINTS = 4 * MAX_JOURNEY_CONTACTS


def customer_journey(state: CustomerState, watermark: float, policy: Policy,
                     limit: int = MAX_JOURNEY_CONTACTS) -> dict[str, Any]:
    """The journey of a customer whose state is held; `watermark` is their partition's.
    Contacts oldest first, the latest `limit` of them; the curve's latest points likewise."""
    verdicts = derive_verdicts(state, watermark, policy)
    wide = replace(policy, perception=replace(policy.perception,
                                              curve_points=MAX_JOURNEY_POINTS))
    curve = perception_curve(state, verdicts, watermark, wide)
    transfers: dict[str, list[dict[str, Any]]] = {}
    for tr in sorted(state.transfers, key=lambda r: (r.t, r.event_id)):
        transfers.setdefault(tr.contact_id, []).append(
            {"at": rfc3339(tr.t), "from_queue": tr.from_queue, "to_queue": tr.to_queue})
    contacts = sorted(state.contacts.values(), key=lambda c: c.order())
    shown = contacts[-limit:] if limit > 0 else []
    rows = []
    for c in shown:
        v = verdicts[c.contact_id]
        moved = curve.by_contact.get(c.contact_id)
        rows.append({
            "contact_id": c.contact_id,
            "occurred_at": c.occurred_at,
            "channel": c.channel,
            "queue": c.queue,
            "agent_id": c.agent,
            "reason": c.reason,
            "wait": c.wait,
            "outcome": c.outcome,
            "is_repeat": v.is_repeat,
            "repeat_of": v.repeat_of,
            "resolution": v.resolution,
            "resolution_reasons": list(v.reasons),
            "transfers": transfers.get(c.contact_id, []),
            "surveys": [{"answered_at": s.answered_at, "csat": s.csat, "nps": s.nps,
                         "ces": s.ces, "resolved": s.resolved} for s in v.surveys],
            "perception_before": None if moved is None else round(moved.before, 2),
            "perception_after": None if moved is None else round(moved.after, 2),
        })
    rules = policy.perception
    return {
        "customer_id": state.customer_id,
        "watermark": rfc3339(watermark),
        "score": round(curve.state.score, 2),
        "at_risk": curve.state.at_risk and not state.is_empty(),
        "at_risk_below": rules.at_risk_below,
        "at_risk_recover_at": rules.at_risk_recover_at,
        "points": [{"at": rfc3339(t), "score": round(s, 2), "cause": cause}
                   for (t, s, cause) in curve.state.points],
        "contacts_held": len(contacts),
        "contacts": rows,
        "policy_version": policy.version,
    }
