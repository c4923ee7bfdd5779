/* The at-risk work list (/api/v1/customers/at-risk), each customer linking to their journey. */
"use strict";
(() => {
  const {api, h, number, when, tile, page, query, status, poll} = CX;
  const LIMIT = 100;
  const order = document.getElementById("order");
  const cell = (content, numeric) => h("td", {className: numeric ? "num" : ""}, content);

  async function step() {
    const list = await api("/api/v1/customers/at-risk?" + query({limit: LIMIT, order: order.value}));
    document.getElementById("tiles").replaceChildren(
      tile("tile-total", "Customers at risk", String(list.total), list.total ? "bad" : "good",
           list.total > list.customers.length ? "the first " + list.customers.length + " shown" : ""),
      tile("tile-value", "Value at risk", number(list.value_at_risk, 0), "", "per month"));
    document.querySelector("#list tbody").replaceChildren(...list.customers.map((c) => {
      const last = (c.last_contacts || [])[0];
      return h("tr", {},
        cell(h("a", {href: page("customers", c.customer_id)}, c.customer_id)),
        cell(c.segment || "–"), cell(number(c.value, 2), true), cell(number(c.score, 1), true),
        cell(number(c.drop, 1), true), cell(when(c.since)), cell(c.cause || "–"),
        cell(last ? when(last.occurred_at) + " · " + last.queue + " · " +
                    (last.resolution || last.outcome) : "–"));
    }));
    status("event time " + (list.watermark || "–") + " · updated " +
           new Date().toLocaleTimeString());
  }

  order.addEventListener("change", () => step().catch((err) => status(err.message)));
  poll(step, 10000);
})();
