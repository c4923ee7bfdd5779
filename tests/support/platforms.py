"""Example source records of Amazon Connect and Genesys Cloud, with the verdicts they must get.

Field names and types are those of the platforms' public documentation: the Amazon Connect
contact record data model (administrator guide) and the Genesys Cloud analytics conversation
detail record (AnalyticsConversation: participants, sessions, segments, metrics, surveys).

Amazon Connect, customer Dana (CRM id `crm-dana` set by the flow in the `crm_id` attribute):
- A1 (09:00-09:10) handled by alice in billing, transferred to retention: A2 (09:10-09:20)
  handled by bob, whose disconnect flow's survey says csat 2, not resolved. A1 and A2 share
  InitialContactId A1: one contact, `A1`, whose last leg is A2's.
- A3 (next day 14:00) queued in billing, hung up before an agent; a callback A4 (14:30-14:45,
  InitialContactId A3) handled by carol: the contact `A3`, handled, a repeat of A1.
Caller Eli (no CRM id: the hashed number):
- A5 (11:00-11:03) finished in the IVR: self-service.
- A6 a task (back-office work): no event.
- A7 (12:00-12:06) handled by alice in billing.
- A8 unmappable: its DisconnectTimestamp is not a timestamp.

Genesys Cloud, customer Fay (external contact `ext-fay`):
- G1 (10:00-10:30) sales agent ann transfers to tech agent ben (wrap-up wc-fixed); Fay answers
  the post-call survey with NPS 9.
- G2 (next day 09:00-09:05) a chat that waited in tech and was left: abandoned.
- G3 (next day 16:00-16:20) handled by ann in tech: a repeat of G1.
Caller Gus (no external contact: the hashed ANI):
- G4 (08:00-08:02) IVR only: self-service.
- G5 unmappable: a cobrowse session, a channel the contract does not have.
"""

from __future__ import annotations

from typing import Any

DAY1 = "2026-06-01"
DAY2 = "2026-06-02"
DANA_PHONE = "+14255550100"
ELI_PHONE = "+14255550142"
GUS_ANI = "tel:+14255550199"


def _connect(contact_id: str, *, start: str, end: str, channel: str = "VOICE",
             method: str = "INBOUND", initial: str | None = None,
             previous: str | None = None, queue: dict[str, Any] | None = None,
             agent: dict[str, Any] | None = None, phone: str = DANA_PHONE,
             attributes: dict[str, str] | None = None,
             disconnect_reason: str = "CUSTOMER_DISCONNECT") -> dict[str, Any]:
    record: dict[str, Any] = {
        "AWSAccountId": "123456789012",
        "AWSContactTraceRecordFormatVersion": "2017-03-10",
        "ContactId": contact_id,
        "InitialContactId": initial,
        "PreviousContactId": previous,
        "Channel": channel,
        "InitiationMethod": method,
        "InitiationTimestamp": start,
        "DisconnectTimestamp": end,
        "LastUpdateTimestamp": end,
        "ConnectedToSystemTimestamp": start,
        "InstanceARN": "arn:aws:connect:us-east-1:123456789012:instance/example",
        "CustomerEndpoint": {"Address": phone, "Type": "TELEPHONE_NUMBER"},
        "SystemEndpoint": {"Address": "+18005550000", "Type": "TELEPHONE_NUMBER"},
        "Queue": queue,
        "Agent": agent,
        "Attributes": attributes or {},
        "DisconnectReason": disconnect_reason,
        "Recording": None,
        "TransferCompletedTimestamp": None,
        "TransferredToEndpoint": None,
    }
    return record


def _queue(name: str, enqueue: str, dequeue: str, duration: int) -> dict[str, Any]:
    return {"ARN": f"arn:aws:connect:us-east-1:123456789012:instance/example/queue/{name}",
            "Name": name, "EnqueueTimestamp": enqueue, "DequeueTimestamp": dequeue,
            "Duration": duration}


def _agent(username: str, connected: str, interaction: int, hold: int = 0,
           acw: int = 30) -> dict[str, Any]:
    return {"ARN": f"arn:aws:connect:us-east-1:123456789012:instance/example/agent/{username}",
            "Username": username, "ConnectedToAgentTimestamp": connected,
            "AgentInteractionDuration": interaction, "CustomerHoldDuration": hold,
            "AfterContactWorkDuration": acw, "NumberOfHolds": 1 if hold else 0,
            "LongestHoldDuration": hold, "RoutingProfile": {"Name": "Basic Routing Profile"}}


def amazon_connect_records() -> list[dict[str, Any]]:
    dana = {"crm_id": "crm-dana"}
    a1 = _connect("A1", start=f"{DAY1}T09:00:00Z", end=f"{DAY1}T09:10:00Z",
                  queue=_queue("billing", f"{DAY1}T09:01:00Z", f"{DAY1}T09:02:00Z", 60),
                  agent=_agent("alice", f"{DAY1}T09:02:00Z", 420, hold=30),
                  attributes={**dana, "disposition": "billing_question"},
                  disconnect_reason="AGENT_DISCONNECT")
    a1["TransferCompletedTimestamp"] = f"{DAY1}T09:10:00Z"
    a1["TransferredToEndpoint"] = {"Address": "retention", "Type": "OTHER"}
    a2 = _connect("A2", start=f"{DAY1}T09:10:00Z", end=f"{DAY1}T09:20:00Z",
                  method="TRANSFER", initial="A1", previous="A1",
                  queue=_queue("retention", f"{DAY1}T09:10:05Z", f"{DAY1}T09:10:35Z", 30),
                  agent=_agent("bob", f"{DAY1}T09:10:35Z", 540),
                  attributes={**dana, "disposition": "retention_offer", "survey_csat": "2",
                              "survey_resolved": "false"})
    a3 = _connect("A3", start=f"{DAY2}T14:00:00Z", end=f"{DAY2}T14:05:00Z",
                  queue=_queue("billing", f"{DAY2}T14:01:00Z", f"{DAY2}T14:05:00Z", 240),
                  attributes=dana)
    a4 = _connect("A4", start=f"{DAY2}T14:30:00Z", end=f"{DAY2}T14:45:00Z",
                  method="CALLBACK", initial="A3", previous="A3",
                  queue=_queue("billing", f"{DAY2}T14:30:00Z", f"{DAY2}T14:32:00Z", 120),
                  agent=_agent("carol", f"{DAY2}T14:32:00Z", 780),
                  attributes={**dana, "disposition": "billing_question"},
                  disconnect_reason="AGENT_DISCONNECT")
    a5 = _connect("A5", start=f"{DAY1}T11:00:00Z", end=f"{DAY1}T11:03:00Z", phone=ELI_PHONE,
                  disconnect_reason="CONTACT_FLOW_DISCONNECT")
    a6 = _connect("A6", start=f"{DAY1}T11:30:00Z", end=f"{DAY1}T11:40:00Z", channel="TASK",
                  method="API", phone=ELI_PHONE)
    a7 = _connect("A7", start=f"{DAY1}T12:00:00Z", end=f"{DAY1}T12:06:00Z", phone=ELI_PHONE,
                  queue=_queue("billing", f"{DAY1}T12:00:30Z", f"{DAY1}T12:01:00Z", 30),
                  agent=_agent("alice", f"{DAY1}T12:01:00Z", 300))
    a8 = _connect("A8", start=f"{DAY1}T13:00:00Z", end="yesterday afternoon",
                  phone=ELI_PHONE)
    return [a1, a2, a3, a4, a5, a6, a7, a8]


def _segment(kind: str, start: str, end: str, **extra: Any) -> dict[str, Any]:
    return {"segmentType": kind, "segmentStart": start, "segmentEnd": end, **extra}


def _participant(pid: str, purpose: str, media: str, segments: list[dict[str, Any]],
                 metrics: list[tuple[str, int]] = (), **extra: Any) -> dict[str, Any]:
    session: dict[str, Any] = {
        "sessionId": f"s-{pid}", "mediaType": media, "direction": "inbound",
        "segments": segments,
        "metrics": [{"name": n, "value": v, "emitDate": segments[-1]["segmentEnd"]}
                    for n, v in metrics],
    }
    if "ani" in extra:
        session["ani"] = extra.pop("ani")
        session["dnis"] = "tel:+18005550000"
    return {"participantId": pid, "purpose": purpose, "sessions": [session], **extra}


def _conversation(cid: str, start: str, end: str, participants: list[dict[str, Any]],
                  surveys: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "conversationId": cid, "conversationStart": start, "conversationEnd": end,
        "originatingDirection": "inbound", "divisionIds": ["d-1"],
        "participants": participants,
    }
    if surveys is not None:
        record["surveys"] = surveys
    return record


def genesys_cloud_records() -> list[dict[str, Any]]:
    t = f"{DAY1}T10"
    g1 = _conversation("G1", f"{t}:00:00.000Z", f"{t}:30:00.000Z", [
        _participant("p1", "customer", "voice", [
            _segment("interact", f"{t}:00:00.000Z", f"{t}:30:00.000Z",
                     disconnectType="peer")],
            ani="tel:+14255550100", externalContactId="ext-fay", participantName="Fay"),
        _participant("p2", "ivr", "voice", [
            _segment("ivr", f"{t}:00:00.000Z", f"{t}:01:00.000Z", disconnectType="transfer")]),
        _participant("p3", "acd", "voice", [
            _segment("interact", f"{t}:01:00.000Z", f"{t}:01:20.000Z", queueId="q-sales",
                     disconnectType="transfer")], metrics=[("tAcd", 20000)]),
        _participant("p4", "agent", "voice", [
            _segment("alert", f"{t}:01:20.000Z", f"{t}:01:25.000Z", queueId="q-sales"),
            _segment("interact", f"{t}:01:25.000Z", f"{t}:10:00.000Z", queueId="q-sales",
                     disconnectType="transfer"),
            _segment("wrapup", f"{t}:10:00.000Z", f"{t}:11:00.000Z", queueId="q-sales",
                     wrapUpCode="wc-upgrade")],
            metrics=[("tTalk", 515000), ("tAcw", 60000)], userId="u-ann"),
        _participant("p5", "acd", "voice", [
            _segment("interact", f"{t}:10:00.000Z", f"{t}:10:40.000Z", queueId="q-tech",
                     disconnectType="transfer")], metrics=[("tAcd", 40000)]),
        _participant("p6", "agent", "voice", [
            _segment("interact", f"{t}:10:40.000Z", f"{t}:15:00.000Z", queueId="q-tech"),
            _segment("hold", f"{t}:15:00.000Z", f"{t}:15:30.000Z", queueId="q-tech"),
            _segment("interact", f"{t}:15:30.000Z", f"{t}:30:00.000Z", queueId="q-tech",
                     disconnectType="client"),
            _segment("wrapup", f"{t}:30:00.000Z", f"{t}:31:00.000Z", queueId="q-tech",
                     wrapUpCode="wc-fixed")],
            metrics=[("tTalk", 1130000), ("tHeld", 30000)], userId="u-ben"),
    ], surveys=[{"surveyId": "sv-1", "surveyFormId": "f-1", "surveyFormName": "Post call",
                 "surveyStatus": "Finished", "surveyPromoterScore": 9,
                 "surveyCompletedDate": f"{DAY1}T12:00:00.000Z", "queueId": "q-tech",
                 "userId": "u-ben", "eventTime": f"{DAY1}T12:00:00.000Z"}])
    u = f"{DAY2}T09"
    g2 = _conversation("G2", f"{u}:00:00.000Z", f"{u}:05:00.000Z", [
        _participant("p1", "customer", "chat", [
            _segment("interact", f"{u}:00:00.000Z", f"{u}:05:00.000Z",
                     disconnectType="client")],
            externalContactId="ext-fay", participantName="Fay"),
        _participant("p2", "acd", "chat", [
            _segment("interact", f"{u}:00:00.000Z", f"{u}:05:00.000Z", queueId="q-tech",
                     disconnectType="peer")], metrics=[("tAbandon", 300000)]),
    ], surveys=[])
    v = f"{DAY2}T16"
    g3 = _conversation("G3", f"{v}:00:00.000Z", f"{v}:20:00.000Z", [
        _participant("p1", "customer", "voice", [
            _segment("interact", f"{v}:00:00.000Z", f"{v}:20:00.000Z", disconnectType="peer")],
            ani="tel:+14255550100", externalContactId="ext-fay"),
        _participant("p2", "acd", "voice", [
            _segment("interact", f"{v}:00:00.000Z", f"{v}:00:30.000Z", queueId="q-tech",
                     disconnectType="transfer")], metrics=[("tAcd", 30000)]),
        _participant("p3", "agent", "voice", [
            _segment("interact", f"{v}:00:30.000Z", f"{v}:20:00.000Z", queueId="q-tech",
                     disconnectType="client"),
            _segment("wrapup", f"{v}:20:00.000Z", f"{v}:21:00.000Z", queueId="q-tech",
                     wrapUpCode="wc-fixed")],
            metrics=[("tTalk", 1170000)], userId="u-ann"),
    ])
    w = f"{DAY1}T08"
    g4 = _conversation("G4", f"{w}:00:00.000Z", f"{w}:02:00.000Z", [
        _participant("p1", "customer", "voice", [
            _segment("interact", f"{w}:00:00.000Z", f"{w}:02:00.000Z", disconnectType="peer")],
            ani=GUS_ANI),
        _participant("p2", "ivr", "voice", [
            _segment("ivr", f"{w}:00:00.000Z", f"{w}:02:00.000Z", disconnectType="client")]),
    ])
    g5 = _conversation("G5", f"{w}:30:00.000Z", f"{w}:40:00.000Z", [
        _participant("p1", "customer", "cobrowse", [
            _segment("interact", f"{w}:30:00.000Z", f"{w}:40:00.000Z")],
            externalContactId="ext-fay"),
    ])
    return [g1, g2, g3, g4, g5]


# What cx-stream must conclude, worked by hand from the records above (docs/sources.md and
# docs/metrics-definitions.md): contact -> (outcome, is_repeat, repeat_of, transfers,
# resolution, resolution_reasons). Windows are 7 days and nothing is settled yet, so a
# handled contact is unresolved only for a cause already seen, else pending.
EXPECTED: dict[str, tuple[str, bool, str | None, int, str, frozenset[str]]] = {
    # Dana: transferred, said "not resolved", and called again the next day.
    "A1": ("handled", False, None, 1, "unresolved",
           frozenset({"transferred", "survey_unresolved", "repeat_contact"})),
    # the abandoned call, then its callback: one handled contact, a repeat of A1
    "A3": ("handled", True, "A1", 0, "pending", frozenset()),
    "A5": ("self_service", False, None, 0, None, frozenset()),
    # Eli's earlier contact was self-service: not a repeat
    "A7": ("handled", False, None, 0, "pending", frozenset()),
    "G1": ("handled", False, None, 1, "unresolved",
           frozenset({"transferred", "repeat_contact"})),
    "G2": ("abandoned", False, None, 0, None, frozenset()),
    "G3": ("handled", True, "G1", 0, "pending", frozenset()),
    "G4": ("self_service", False, None, 0, None, frozenset()),
}
