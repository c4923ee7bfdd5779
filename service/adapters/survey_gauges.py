"""Survey truth gauges (domain/survey_truth.py), recomputed with the business gauges.

`cx_ces_average` per window and dimension, as CSAT; the survey-behaviour gap and CSAT and NPS
by resolution per window and queue, of the window ending one repeat window before the
watermark (like `cx_fcr_final_ratio`): by then every repeat that could come has come. The
complaint rate and average sentiment per speech analytics topic, for the centre and within
each queue (at most QUEUE_TOPIC_SERIES queue and topic pairs per window, the busiest).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Gauge

from service.domain import survey_truth, voice
from service.domain.counters import driver_name

# Series of queue and topic pairs per window: the busiest by contacts (topic names are capped
# by CX_MAX_TOPICS, queues by CX_MAX_QUEUES; their product could still be large).
QUEUE_TOPIC_SERIES = 200

# The business gauges' labels (window, queue, channel, segment, agent) of a window and dimension
LabelsOf = Callable[[str, str], dict[str, str]]


class SurveyTruthGauges:
    def __init__(self, registry: CollectorRegistry, labels: list[str], version: str) -> None:
        self.ces = Gauge("cx_ces_average",
                         "Average CES (1-7, lower is easier) of surveys joined to the window's "
                         "contacts.", [*labels, version], registry=registry)
        self.gap = Gauge(
            "cx_survey_gap_ratio",
            "Survey-behaviour gap of the window ending one repeat window before the watermark: "
            "`said_resolved_repeated` share of contacts whose survey said resolved that a "
            "repeat followed; `said_unresolved_not_repeated` share of contacts whose survey "
            "said not resolved that no repeat followed.",
            ["measure", "window", "queue", version], registry=registry)
        self.csat = Gauge(
            "cx_csat_by_resolution",
            "Average CSAT of the resolved or unresolved contacts (`resolution`), of the window "
            "ending one repeat window before the watermark.",
            ["resolution", "window", "queue", version], registry=registry)
        self.nps = Gauge(
            "cx_nps_by_resolution",
            "NPS of the resolved or unresolved contacts (`resolution`), of the window ending "
            "one repeat window before the watermark.",
            ["resolution", "window", "queue", version], registry=registry)
        # speech and text analytics (domain/voice.py)
        self.complaints = Gauge(
            "cx_complaint_ratio",
            "Contacts in which speech or text analytics heard a complaint / contacts analysed "
            "for complaints, in the trailing window.", [*labels, version], registry=registry)
        self.sentiment = Gauge(
            "cx_sentiment_average",
            "Average sentiment (-1 to 1) heard by speech or text analytics in the window's "
            "contacts.", [*labels, version], registry=registry)
        self.topic_complaints = Gauge(
            "cx_topic_complaint_ratio",
            "Per speech analytics topic (`queue` empty: all queues), contacts in which a "
            "complaint was heard / contacts analysed for complaints, in the trailing window.",
            ["window", "queue", "topic", version], registry=registry)
        self.topic_sentiment = Gauge(
            "cx_topic_sentiment_average",
            "Per speech analytics topic (`queue` empty: all queues), the average sentiment "
            "(-1 to 1) of the window's contacts.",
            ["window", "queue", "topic", version], registry=registry)
        self._rows: list[tuple[Gauge, tuple[str, ...], float]] = []

    def add(self, window: str, recent: Mapping[str, Mapping[str, int]],
            closed: Mapping[str, Mapping[str, int]], labels_of: LabelsOf,
            version: str) -> None:
        """Compute one window's figures (set by `publish`)."""
        for dimension, counts in recent.items():
            labels = (*labels_of(window, dimension).values(), version)
            for gauge, value in ((self.ces, survey_truth.ces(counts)),
                                 (self.complaints, voice.complaint_rate(counts)),
                                 (self.sentiment, voice.sentiment_average(counts))):
                if value is not None:
                    self._rows.append((gauge, labels, value))
        for dimension, counts in closed.items():
            if dimension == "all":
                queue = ""
            elif dimension.startswith("queue:"):
                queue = dimension[len("queue:"):]
            else:
                continue
            for measure, share in survey_truth.gap(counts).items():
                if share is not None:
                    self._rows.append((self.gap, (measure, window, queue, version), share))
            for resolution, figures in survey_truth.by_resolution(counts).items():
                for gauge, value in ((self.csat, figures["csat"]), (self.nps, figures["nps"])):
                    if value is not None:
                        self._rows.append((gauge, (resolution, window, queue, version), value))

    def add_topics(self, window: str, recent: Mapping[str, Mapping[str, int]],
                   version: str) -> None:
        """The topic gauges of one window, from its counters per dimension (`topic:<t>`,
        `queue_topic:<q>><t>`)."""
        pairs: list[tuple[int, str, str, Mapping[str, int]]] = []
        for dimension, counts in recent.items():
            kind, _, value = dimension.partition(":")
            if kind == "topic":
                self._add_topic(window, "", value, counts, version)
            elif kind == "queue_topic":
                queue, _, topic = value.partition(">")
                pairs.append((counts.get("contacts", 0), driver_name(queue), driver_name(topic),
                              counts))
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        for _, queue, topic, counts in pairs[:QUEUE_TOPIC_SERIES]:
            self._add_topic(window, queue, topic, counts, version)

    def _add_topic(self, window: str, queue: str, topic: str, counts: Mapping[str, int],
                   version: str) -> None:
        for gauge, value in ((self.topic_complaints, voice.complaint_rate(counts)),
                             (self.topic_sentiment, voice.sentiment_average(counts))):
            if value is not None:
                self._rows.append((gauge, (window, queue, topic, version), value))

    def publish(self) -> None:
        """Replace every series by those computed since the last publish (no await)."""
        for gauge in (self.ces, self.gap, self.csat, self.nps, self.complaints, self.sentiment,
                      self.topic_complaints, self.topic_sentiment):
            gauge.clear()
        for gauge, labels, value in self._rows:
            gauge.labels(*labels).set(value)
        self._rows = []

