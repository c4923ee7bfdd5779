/* The wallboard: the centre's tiles (/api/v1/wallboard), the FCR trend (/api/v1/fcr/hourly),
   the cost of repeats (/api/v1/cost, when costs are configured), and at most MAX_QUEUES queue
   tiles with sparklines, the busiest, the rest summed as "other". */
"use strict";
(() => {
  const {api, h, percent, number, fcrState, tile, page, query, status, poll, range} = CX;
  const MAX_QUEUES = Number(new URLSearchParams(location.hash.slice(1)).get("queues")) || 8;
  const drawTrend = Charts.trend(document.getElementById("trend"), 300);
  const sparks = new Map();  // queue -> {box, draw}
  let latest = null;  // the wallboard's last answer
  let extras = {cost: null, currency: null, values: false};

  document.getElementById("lookup").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = document.getElementById("lookup-id").value.trim();
    if (id) location.href = page("customers", id);
  });

  /* Sum of FCR-population and unresolved contacts over the series: FCR of the whole range. */
  function overall(points) {
    let total = 0, unresolved = 0;
    for (const p of points) { total += p.total; unresolved += p.unresolved; }
    return {total, fcr: total > 0 ? 1 - unresolved / total : null};
  }

  function sparkFor(queue) {
    if (!sparks.has(queue)) {
      const box = h("div", {className: "spark", "aria-hidden": "true"});
      sparks.set(queue, {box, draw: Charts.sparkline(box, 44), hourly: null});
    }
    return sparks.get(queue);
  }

  function render() {
    const data = latest;
    if (!data) return;
    const c = data.centre || {};
    const t = data.fcr_target;
    const tiles = [
      tile("tile-fcr", "FCR " + data.window, percent(c.fcr_provisional),
           fcrState(c.fcr_provisional, t), "target " + percent(t)),
      tile("tile-repeat", "Repeat contacts", percent(c.repeat),
           CX.missing(c.repeat) ? "" : (c.repeat <= 1 - t ? "good" : "bad"), data.window),
      tile("tile-csat", "CSAT", number(c.csat, 2), CX.missing(c.csat) ? "" :
           (c.csat >= 4 ? "good" : c.csat >= 3.5 ? "warn" : "bad"), "out of 5"),
      tile("tile-nps", "NPS", number(c.nps, 0), CX.missing(c.nps) ? "" :
           (c.nps >= 30 ? "good" : c.nps >= 0 ? "warn" : "bad"), data.window),
      tile("tile-at-risk", "Customers at risk", String(c.customers_at_risk ?? "–"), "", ""),
    ];
    tiles[4].querySelector(".detail").append(h("a", {href: "/ui/at-risk"}, "work list"));
    if (extras.values || c.value_at_risk > 0) {
      tiles.push(tile("tile-value-at-risk", "Value at risk", number(c.value_at_risk, 0), "",
                      "per month"));
    }
    if (extras.cost) {
      tiles.push(tile("tile-repeat-cost", "Cost of repeats",
                      number(extras.cost.repeat_cost, 0), "",
                      extras.cost.currency + " · last 24 h"));
    }
    tiles.push(tile("tile-contacts", "Contacts last hour", number(c.contacts_last_hour, 0), "",
                    "all outcomes"));
    document.getElementById("centre").replaceChildren(...tiles);

    const queues = [...(data.queues || [])].sort((a, b) =>
      (b.contacts_last_hour || 0) - (a.contacts_last_hour || 0) ||
      (a.queue < b.queue ? -1 : a.queue > b.queue ? 1 : 0));
    const shown = queues.slice(0, MAX_QUEUES);
    const rest = queues.slice(MAX_QUEUES);
    const els = shown.map((q) => {
      const el = tile("queue-" + q.queue, "", percent(q.fcr_provisional),
                      fcrState(q.fcr_provisional, t),
                      "repeats " + percent(q.repeat) + " · " + number(q.contacts_last_hour, 0) +
                      " contacts last hour");
      el.classList.add("queue");
      el.querySelector(".label").append(h("a", {href: page("queues", q.queue)}, q.queue));
      el.append(sparkFor(q.queue).box);
      return el;
    });
    if (rest.length > 0) {
      const contacts = rest.reduce((n, q) => n + (q.contacts_last_hour || 0), 0);
      const el = tile("queue-other", "other: " + rest.length + " queues", number(contacts, 0),
                      "", "contacts last hour, summed");
      el.classList.add("queue");
      els.push(el);
    }
    document.getElementById("queues").replaceChildren(...els);
    status("event time " + (data.watermark || "–") + " · updated " +
           new Date().toLocaleTimeString());
  }

  async function board() {
    latest = await api("/api/v1/wallboard");
    render();
  }

  /* The trend, the sparklines and the cost read the API, which may need a token the open
     wallboard was not given: then the tiles go on without them. */
  async function trends() {
    let hourly;
    try {
      hourly = await api("/api/v1/fcr/hourly?hours=24");
    } catch (err) {
      document.getElementById("trend-title").textContent =
        "FCR by hour: not shown (" + err.message.split(" from ")[0] +
        "; open the page as /wallboard#token=...)";
      return;
    }
    extras.values = hourly.values_configured;
    extras.currency = hourly.currency;
    if (!hourly.watermark) return;
    drawTrend(hourly);
    const now = overall(hourly.series), before = overall(hourly.week_before);
    const facts = [["tile-trend-now", now], ["tile-trend-before", before]];
    for (const [id, figure] of facts) {
      const el = document.getElementById(id);
      el.querySelector(".value").textContent = percent(figure.fcr);
      el.querySelector(".detail").textContent = figure.total + " contacts in FCR";
      el.className = "tile " + fcrState(figure.fcr, hourly.fcr_target);
    }
    if (hourly.currency) {
      extras.cost = await api("/api/v1/cost?" + query(range(hourly.watermark, 24)), true);
    }
    const shown = [...sparks.keys()].filter((q) => document.getElementById("queue-" + q));
    for (const queue of shown) {
      const spark = sparks.get(queue);
      spark.draw(await api("/api/v1/fcr/hourly?" + query({hours: 24, queue: queue})));
    }
    render();
  }

  (async () => {  // the tiles first: the trends draw the sparklines of the tiles shown
    try { await board(); } catch (err) { status("not updating: " + err.message); }
    poll(trends, 15000);
    setTimeout(() => poll(board, 3000), 3000);
  })();
})();
