/* A queue: its FCR and trend (/api/v1/fcr, /api/v1/fcr/hourly), repeat drivers as a Pareto
   (/api/v1/repeat-drivers), failed containment (/api/v1/containment) and its agents with
   their intervals (/api/v1/agents), and its contacts of the last hour with their verdicts
   (/api/v1/queues/{queue}/contacts). */
"use strict";
(() => {
  const {api, h, percent, number, money, fcrState, tile, query, status, poll, range} = CX;
  const queue = CX.pathId("/ui/queues/");
  document.getElementById("title").textContent = "Queue " + queue;
  document.title = "Queue " + queue + " · cx-stream";
  const select = document.getElementById("range");
  const drawTrend = Charts.trend(document.getElementById("trend"), 260);
  const drawPareto = Charts.pareto(document.getElementById("pareto"), 260);
  const cell = (text, numeric) => h("td", {className: numeric ? "num" : ""}, text);
  const STATUS = {ranked: "ranked", not_enough_contacts: "not enough contacts",
                  no_closed_contacts: "no closed contacts", other_agents: "other agents"};

  function verdict(c) {
    const parts = [c.resolution || "not in FCR"];
    if (c.resolution_reasons && c.resolution_reasons.length) {
      parts[0] += " (" + c.resolution_reasons.join(", ") + ")";
    }
    if (c.is_repeat) parts.push("repeat of " + c.repeat_of);
    return parts.join(" · ");
  }

  async function step() {
    const hours = Number(select.value);
    const hourly = await api("/api/v1/fcr/hourly?" + query({hours, queue}));
    if (!hourly.watermark) { status("no events yet"); return; }
    const span = range(hourly.watermark, hours);
    const [fcr, drivers, containment, agents, cost, latest] = await Promise.all([
      api("/api/v1/fcr?" + query({...span, queue})),
      api("/api/v1/repeat-drivers?" + query({...span, by: "reason", queue, limit: 10})),
      api("/api/v1/containment?" + query({...span, queue})),
      api("/api/v1/agents?" + query({...span, queue, limit: 100})),
      hourly.currency ? api("/api/v1/cost?" + query({...span, queue}), true) : null,
      api("/api/v1/queues/" + encodeURIComponent(queue) + "/contacts?limit=100"),
    ]);
    drawTrend(hourly);
    const label = hours === 24 ? "last 24 h" : "last 7 days";
    const tiles = [
      tile("tile-fcr", "FCR " + label, percent(fcr.fcr), fcrState(fcr.fcr, hourly.fcr_target),
           (fcr.final ? "final" : "provisional") + " · target " + percent(hourly.fcr_target)),
      tile("tile-population", "Contacts in FCR", number(fcr.total, 0), "",
           fcr.unresolved + " unresolved · " + fcr.pending + " pending"),
      tile("tile-failed-containment", "Failed self-service",
           percent(containment.failed_containment_ratio), "",
           containment.failed_containment + " of " + containment.self_service_identified),
    ];
    if (cost) {
      tiles.push(tile("tile-repeat-cost", "Cost of repeats", money(cost.repeat_cost), "",
                      cost.currency + " · " + cost.repeats + " repeats"));
    }
    document.getElementById("tiles").replaceChildren(...tiles);

    drawPareto(drivers.rows);
    document.querySelector("#drivers tbody").replaceChildren(...drivers.rows.map((r) =>
      h("tr", {}, cell(r.driver), cell(number(r.unresolved, 0), true),
        cell(percent(r.share), true), cell(percent(r.cumulative_share), true),
        cell(percent(r.fcr), true),
        cell(CX.missing(r.repeat_cost) ? "–" : money(r.repeat_cost, drivers.currency), true))));

    const c = containment;
    document.querySelector("#containment tbody").replaceChildren(
      h("tr", {}, h("th", {scope: "row"}, "Self-service contacts (identified)"),
        cell(c.self_service + " (" + c.self_service_identified + ")", true)),
      h("tr", {}, h("th", {scope: "row"}, "followed by an assisted contact"),
        cell(c.failed_containment + " · " + percent(c.failed_containment_ratio), true)),
      h("tr", {}, h("th", {scope: "row"}, "Abandoned contacts (identified)"),
        cell(c.abandoned + " (" + c.abandoned_identified + ")", true)),
      h("tr", {}, h("th", {scope: "row"}, "called back"),
        cell(c.abandon_callbacks + " · " + percent(c.abandon_callback_ratio), true)));

    document.getElementById("agents-rule").textContent =
      "Agents with fewer than " + agents.min_contacts + " handled contacts are neither ranked " +
      "nor flagged; an agent is flagged only when the whole interval is below the queue's FCR. " +
      agents.agents_total + " agents, " + agents.flagged_total + " flagged.";
    document.querySelector("#agents tbody").replaceChildren(...agents.agents.map((a) =>
      h("tr", {className: a.flagged ? "flagged" : ""}, cell(a.agent),
        cell((STATUS[a.status] || a.status) + (a.rank ? " #" + a.rank : "") +
             (a.flagged ? " · flagged" : "")),
        cell(number(a.handled, 0), true), cell(percent(a.fcr), true),
        cell(CX.missing(a.fcr_low) ? "–" : percent(a.fcr_low) + " – " + percent(a.fcr_high), true),
        cell(percent(a.centre_fcr_same_queues), true), cell(number(a.caused_repeats, 0), true))));
    document.getElementById("latest-note").textContent =
      latest.contacts.length + " contacts since " + (latest.from || "–") +
      (latest.contacts.length >= latest.limit ? " (the latest " + latest.limit + ")" : "");
    document.querySelector("#latest tbody").replaceChildren(...latest.contacts.map((c) =>
      h("tr", {className: c.resolution === "unresolved" ? "flagged" : ""},
        cell(String(c.occurred_at).slice(11, 19)),
        cell(c.customer_id ? h("a", {href: CX.page("customers", c.customer_id)}, c.customer_id)
                           : "–"),
        cell(c.channel), cell(c.agent_id || "–"), cell(c.reason || "–"), cell(c.outcome),
        cell(CX.missing(c.wait_seconds) ? "–" : number(c.wait_seconds, 0) + " s", true),
        cell(verdict(c)))));
    status("event time " + hourly.watermark + " · updated " + new Date().toLocaleTimeString());
  }

  select.addEventListener("change", () => step().catch((err) => status(err.message)));
  poll(step, 10000);
})();
