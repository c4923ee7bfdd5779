/* What every page shares: the API with its bearer token, safe element building (text only,
   never HTML from data), number formats, time ranges and polling. */
"use strict";
const CX = (() => {
  const KEY = "cx-token";

  /* The token given as #token=... (the fragment never leaves the browser), kept for the tab. */
  function token() {
    const given = new URLSearchParams(location.hash.slice(1)).get("token");
    try {
      if (given) sessionStorage.setItem(KEY, given);
      return given || sessionStorage.getItem(KEY);
    } catch (err) {
      return given;
    }
  }

  /* GET an API path; the parsed JSON, or null for a 404 when `missingOk`. */
  async function api(path, missingOk) {
    const t = token();
    const response = await fetch(path, {cache: "no-store",
                                        headers: t ? {Authorization: "Bearer " + t} : {}});
    if (missingOk && response.status === 404) return null;
    if (!response.ok) throw new Error("HTTP " + response.status + " from " + path.split("?")[0]);
    return response.json();
  }

  /* An element with properties (textContent, className, href, ...) and children (elements or
     strings, added as text). */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k === "dataset") Object.assign(el.dataset, v);
      else if (k.startsWith("aria-") || k === "role" || k === "scope") el.setAttribute(k, v);
      else el[k] = v;
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const missing = (v) => v === undefined || v === null;
  const percent = (v) => missing(v) ? "–" : (100 * v).toFixed(1) + "%";
  const number = (v, digits) => missing(v) ? "–" : Number(v).toFixed(digits || 0);
  const money = (v, currency) => missing(v) ? "–" : Number(v).toFixed(2) + (currency ? " " + currency : "");
  const when = (iso) => missing(iso) ? "–" : String(iso).slice(0, 16).replace("T", " ");

  function fcrState(value, target) {
    if (missing(value)) return "";
    if (value >= target) return "good";
    return value >= target - 0.05 ? "warn" : "bad";
  }

  /* A tile: label, big value, detail line. */
  function tile(id, label, value, state, detail) {
    return h("div", {id: id, className: "tile " + (state || "")},
             h("div", {className: "label"}, label), h("div", {className: "value"}, value),
             h("div", {className: "detail"}, detail || ""));
  }

  const HOUR = 3600 * 1000;
  const iso = (ms) => new Date(ms).toISOString().slice(0, 13) + ":00:00Z";

  /* The last `hours` hours of event time up to the watermark's hour (included), as the
     API's from/to. */
  function range(watermark, hours) {
    const end = (Math.floor(Date.parse(watermark) / HOUR) + 1) * HOUR;
    return {from: iso(end - hours * HOUR), to: iso(end)};
  }

  const page = (kind, id) => "/ui/" + kind + "/" + encodeURIComponent(id);
  const query = (params) => new URLSearchParams(
    Object.entries(params).filter(([, v]) => !missing(v))).toString();

  function status(text) {
    const el = document.getElementById("status");
    if (el) el.textContent = text;
  }

  /* Run `step` now and every `ms` after it finished; a failure shows in the status line. */
  function poll(step, ms) {
    async function run() {
      try {
        await step();
      } catch (err) {
        status("not updating: " + err.message);
      }
      setTimeout(run, ms);
    }
    run();
  }

  /* The one path segment after `prefix` of this page's address, decoded. */
  function pathId(prefix) {
    const raw = location.pathname.slice(prefix.length);
    try {
      return decodeURIComponent(raw);
    } catch (err) {  // a '%' not followed by two hex digits: the API will say so
      return raw;
    }
  }

  return {api, h, percent, number, money, when, fcrState, tile, range, page, query, status,
          poll, pathId, missing};
})();
