/* A customer's journey (/api/v1/customers/{id}/journey): the perception curve with the at-risk
   band and the cause of each move, and the timeline of contacts with their verdicts, the
   contacts they repeat (linked), transfers and survey answers. */
"use strict";
(() => {
  const {api, h, number, when, tile, status, poll} = CX;
  const customer = CX.pathId("/ui/customers/");
  document.getElementById("title").textContent = "Customer " + customer;
  document.title = "Customer " + customer + " · cx-stream";
  const pointText = document.getElementById("point");
  const drawCurve = Charts.perception(document.getElementById("curve"), 280, (p, before) => {
    const move = before ? (p.score - before.score) : 0;
    pointText.textContent = when(p.at) + " · " + p.cause + " · " +
      (move >= 0 ? "+" : "") + move.toFixed(1) + " → " + p.score.toFixed(1);
  });
  const cell = (content, numeric) => h("td", {className: numeric ? "num" : ""}, content);
  let shown = null;  // the watermark and count last drawn

  function survey(s) {
    const parts = [];
    if (!CX.missing(s.csat)) parts.push("CSAT " + s.csat);
    if (!CX.missing(s.nps)) parts.push("NPS " + s.nps);
    if (!CX.missing(s.ces)) parts.push("CES " + s.ces);
    if (!CX.missing(s.resolved)) parts.push(s.resolved ? "said resolved" : "said unresolved");
    return parts.join(" · ");
  }

  function render(j) {
    const rowOf = new Map(j.contacts.map((c, i) => [c.contact_id, "contact-" + i]));
    document.getElementById("tiles").replaceChildren(
      tile("tile-score", "Perception", number(j.score, 1),
           j.at_risk ? "bad" : j.score < j.at_risk_recover_at ? "warn" : "good",
           j.at_risk ? "at risk" : "not at risk"),
      tile("tile-contacts", "Contacts held", String(j.contacts_held), "",
           "shown: " + j.contacts.length),
      tile("tile-open", "Pending", String(j.contacts.filter((c) => c.resolution === "pending").length),
           "", "resolution not known yet"));
    document.getElementById("threshold").textContent = String(j.at_risk_below);
    drawCurve(j);
    const rows = j.contacts.map((c, i) => {
      const verdict = h("td", {className: "verdict-" + (c.resolution || "none")},
                        c.resolution || "not in FCR");
      if (c.resolution_reasons.length) verdict.append(" (" + c.resolution_reasons.join(", ") + ")");
      if (c.repeat_of) {
        const target = rowOf.get(c.repeat_of);
        verdict.append(h("br"), "repeat of ",
                       target ? h("a", {href: "#" + target, dataset: {target}}, c.repeat_of)
                              : c.repeat_of);
      }
      const moved = CX.missing(c.perception_after) ? "–"
        : number(c.perception_before, 1) + " → " + number(c.perception_after, 1);
      return h("tr", {id: "contact-" + i},
        cell(when(c.occurred_at)), cell(c.channel), cell(c.queue), cell(c.agent_id || "–"),
        cell(number(c.wait, 0) + " s", true), cell(c.outcome), verdict,
        cell(c.transfers.map((t) => t.from_queue + " → " + t.to_queue).join("; ")),
        cell(c.surveys.map(survey).join("; ")), cell(moved, true));
    });
    document.querySelector("#timeline tbody").replaceChildren(...rows);
  }

  // A repeat_of link marks the contact it repeats.
  document.getElementById("timeline").addEventListener("click", (event) => {
    const link = event.target.closest("a[data-target]");
    if (!link) return;
    document.querySelectorAll("tr.target-row").forEach((r) => r.classList.remove("target-row"));
    const row = document.getElementById(link.dataset.target);
    if (row) row.classList.add("target-row");
  });

  async function step() {
    const j = await api("/api/v1/customers/" + encodeURIComponent(customer) + "/journey", true);
    if (j === null) { status("no customer " + JSON.stringify(customer)); return; }
    const key = j.watermark + "|" + j.contacts_held + "|" + j.score;
    if (key !== shown) {
      render(j);
      if (shown === null) {  // since the navigation started: what the page's load costs
        document.body.dataset.drawnAfterMs = performance.now().toFixed(1);
      }
      shown = key;
    }
    status("event time " + j.watermark + " · updated " + new Date().toLocaleTimeString());
  }

  poll(step, 5000);
})();
