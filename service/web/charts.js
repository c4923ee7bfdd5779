/* The pages' charts, drawn by uPlot (vendored, service/web/vendor/): the FCR trend against a
   week earlier and the target, a sparkline, the repeat drivers' Pareto and the perception
   curve. Each returns an `update(data)` that draws the chart once, then only new data. */
"use strict";
const Charts = (() => {
  const AXIS = {stroke: "#c9d1d9", grid: {stroke: "#2c3846", width: 1},
                ticks: {stroke: "#2c3846", width: 1}};
  const secs = (iso) => Date.parse(iso) / 1000;
  const pct = (u, v) => v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%";
  const pctTicks = (u, values) => values.map((v) => Math.round(v * 100) + "%");
  const utcHour = (u, v) => v === null || v === undefined ? "–"
    : new Date(v * 1000).toISOString().slice(0, 16).replace("T", " ");
  const tzDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");
  /* Time ticks in UTC, 24-hour: the hour, or the date at midnight. */
  const utcTicks = (u, ticks) => ticks.map((t) => {
    const text = new Date(t * 1000).toISOString();
    return text.slice(11, 16) === "00:00" ? text.slice(5, 10) : text.slice(11, 16);
  });
  const widthOf = (el) => Math.max(160, Math.floor(el.clientWidth));
  const around = (u, min, max) => min === max ? [min - 3600, max + 3600] : [min, max];

  /* Keep the chart as wide as its box. */
  function follow(u, el, height) {
    const observer = new ResizeObserver(() => {
      if (widthOf(el) !== u.width) u.setSize({width: widthOf(el), height: height});
    });
    observer.observe(el);
    return observer;
  }

  /* FCR by hour: `hourly` is the answer of /api/v1/fcr/hourly. */
  function trend(el, height) {
    let u = null;
    return (hourly) => {
      const xs = hourly.series.map((p) => secs(p.at));
      const data = [xs, hourly.series.map((p) => p.fcr), hourly.week_before.map((p) => p.fcr),
                    xs.map(() => hourly.fcr_target)];
      if (u) return u.setData(data);
      u = new uPlot({
        width: widthOf(el), height: height, tzDate: tzDate,
        scales: {x: {time: true, range: around}, y: {range: [0, 1]}},
        series: [{label: "hour (UTC)", value: utcHour},
                 {label: "last " + hourly.hours + " h", stroke: "#4fb3ff", width: 3, value: pct},
                 {label: "a week earlier", stroke: "#a9b5c0", width: 2, dash: [8, 5], value: pct},
                 {label: "target", stroke: "#f0c040", width: 1.5, points: {show: false},
                  value: pct}],
        axes: [{...AXIS, values: utcTicks}, {...AXIS, values: pctTicks, size: 56}],
      }, data, el);
      follow(u, el, height);
    };
  }

  /* A queue's FCR by hour, small, without axes. */
  function sparkline(el, height) {
    let u = null;
    return (hourly) => {
      const data = [hourly.series.map((p) => secs(p.at)), hourly.series.map((p) => p.fcr),
                    hourly.series.map(() => hourly.fcr_target)];
      if (u) return u.setData(data);
      u = new uPlot({
        width: widthOf(el), height: height, cursor: {show: false}, legend: {show: false},
        scales: {x: {time: false, range: around}, y: {range: [0, 1]}},
        series: [{}, {stroke: "#4fb3ff", width: 2, points: {show: false}},
                 {stroke: "#f0c040", width: 1, points: {show: false}}],
        axes: [{show: false}, {show: false}],
      }, data, el);
      follow(u, el, height);
    };
  }

  /* Repeat drivers: unresolved contacts per driver as bars, the cumulative share as a line.
     `rows` are those of /api/v1/repeat-drivers. */
  function pareto(el, height) {
    let u = null, names = [], observer = null;
    return (rows) => {
      const next = rows.map((r) => r.driver);
      const data = [rows.map((_, i) => i), rows.map((r) => r.unresolved),
                    rows.map((r) => r.cumulative_share)];
      if (u && JSON.stringify(next) === JSON.stringify(names)) return u.setData(data);
      if (u) { observer.disconnect(); u.destroy(); }
      names = next;
      const short = (i) => { const n = names[i]; return n === undefined ? "" :
        (n.length > 16 ? n.slice(0, 15) + "…" : n); };
      u = new uPlot({
        width: widthOf(el), height: height,
        scales: {x: {time: false, range: () => [-0.5, Math.max(0.5, names.length - 0.5)]},
                 n: {range: (u, min, max) => [0, Math.max(1, max) * 1.1]},
                 share: {range: [0, 1]}},
        series: [{label: "driver", value: (u, v) => v === null ? "–" : (names[v] ?? "")},
                 {label: "unresolved", scale: "n", stroke: "#4fb3ff",
                  fill: "rgba(79,179,255,0.55)", paths: uPlot.paths.bars({size: [0.6, 90]}),
                  points: {show: false}},
                 {label: "cumulative share", scale: "share", stroke: "#f0c040", width: 2,
                  value: pct, points: {show: true, size: 7}}],
        axes: [{...AXIS, splits: () => names.map((_, i) => i),
                values: (u, splits) => splits.map(short), size: 44},
               {...AXIS, scale: "n", size: 50},
               {...AXIS, scale: "share", side: 1, grid: {show: false}, values: pctTicks,
                size: 56}],
      }, data, el);
      observer = follow(u, el, height);
    };
  }

  /* The perception curve: a point per signal, the at-risk band under `below`, and the cause
     of the point under the cursor given to `onPoint(point)`. */
  function perception(el, height, onPoint) {
    let u = null, points = [], below = 40;
    return (journey) => {
      points = journey.points;
      below = journey.at_risk_below;
      const data = [points.map((p) => secs(p.at)), points.map((p) => p.score)];
      if (u) return u.setData(data);
      u = new uPlot({
        width: widthOf(el), height: height, tzDate: tzDate,
        scales: {x: {time: true, range: around}, y: {range: [0, 100]}},
        series: [{label: "time (UTC)", value: utcHour},
                 {label: "perception", stroke: "#4fb3ff", width: 2,
                  points: {show: true, size: 8, fill: "#4fb3ff"},
                  value: (u, v) => v === null || v === undefined ? "–" : v.toFixed(1)}],
        axes: [{...AXIS, values: utcTicks}, {...AXIS, size: 44}],
        hooks: {
          drawClear: [(u) => {
            const {left, width} = u.bbox;
            const top = u.valToPos(below, "y", true), bottom = u.valToPos(0, "y", true);
            u.ctx.save();
            u.ctx.fillStyle = "rgba(224,82,82,0.2)";
            u.ctx.fillRect(left, top, width, bottom - top);
            u.ctx.restore();
          }],
          draw: [(u) => {  // the causes of each fall, written at its point while few enough
            const falls = [];  // [time, score, causes] per moment the curve fell
            let previous = null;
            for (const p of points) {
              const last = falls[falls.length - 1];
              if (last && last[0] === p.at) {
                last[1] = p.score;
                if (!last[2].includes(p.cause)) last[2].push(p.cause);
              } else {
                falls.push([p.at, p.score, [p.cause], previous]);
              }
              previous = p.score;
            }
            const shown = falls.filter((f) => f[3] !== null && f[1] < f[3] - 0.5);
            if (shown.length > 30) return;
            u.ctx.save();
            u.ctx.fillStyle = "#f2f5f7";
            u.ctx.font = Math.round(11 * devicePixelRatio) + "px sans-serif";
            for (const [at, score, causes] of shown) {
              u.ctx.fillText(causes.join(" + "), u.valToPos(secs(at), "x", true) + 6,
                             u.valToPos(score, "y", true) + 14 * devicePixelRatio);
            }
            u.ctx.restore();
          }],
          setCursor: [(u) => {
            const i = u.cursor.idx;
            if (i !== null && i !== undefined && points[i]) onPoint(points[i], points[i - 1]);
          }],
        },
      }, data, el);
      follow(u, el, height);
    };
  }

  return {trend, sparkline, pareto, perception};
})();
