// The WDML dashboard: reads the JSON API, draws plain SVG, redraws when the
// coordinator says a round closed (server-sent events). No library, no build step.
"use strict";

// Colour by node id, the same in every chart and in the run directory's figures
// (matplotlib's tab10, as src/cli/plot.rs draws them).
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const colour = (id) => COLOURS[id % COLOURS.length];
const NS = "http://www.w3.org/2000/svg";

function el(name, attrs, parent, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }

// Round numbers for an axis from 0 (or lo) to hi: 1, 2 or 5 × a power of ten.
function ticks(lo, hi, count, integer) {
  const span = Math.max(hi - lo, integer ? 1 : 1e-12);
  let step = Math.pow(10, Math.floor(Math.log10(span / count)));
  for (const m of [1, 2, 5, 10]) { if (span / (step * m) <= count) { step *= m; break; } }
  if (integer) step = Math.max(1, Math.round(step));
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

// A tick label: plain from 0.01 to 10,000, SI-prefixed beyond (2m, 15k), as in the
// run directory's figures.
function fmt(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  for (const [f, p] of [[1e9, "G"], [1e6, "M"], [1e4, "k"]]) if (a >= f) return `${+(v / (f === 1e4 ? 1e3 : f)).toPrecision(3)}${f === 1e4 ? "k" : p}`;
  if (a >= 0.01) return String(+v.toPrecision(3));
  for (const [f, p] of [[1e-3, "m"], [1e-6, "µ"], [1e-9, "n"]]) if (a >= f) return `${+(v / f).toPrecision(3)}${p}`;
  return v.toExponential(1);
}

// A line chart: one polyline per series, integer round ticks on x.
function lineChart(svg, series, yMin) {
  clear(svg);
  const W = 440, H = 260, L = 46, R = 10, T = 10, B = 30;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const x1 = Math.max(1, ...xs), y0 = yMin === undefined ? Math.min(0, ...ys) : yMin;
  // (all at y0, e.g. no radio cost: an axis of 0 to 1)
  const top = Math.max(...ys);
  const y1 = top > y0 ? top : y0 + 1;
  const X = (x) => L + (W - L - R) * (x - 1) / Math.max(1, x1 - 1);
  const Y = (y) => H - B - (H - T - B) * (y - y0) / (y1 - y0);
  const axis = el("g", { class: "axis" }, svg);
  for (const t of ticks(y0, y1, 5, false)) {
    el("line", { class: "grid", x1: L, x2: W - R, y1: Y(t), y2: Y(t) }, axis);
    el("text", { x: L - 4, y: Y(t) + 4, "text-anchor": "end" }, axis, fmt(t));
  }
  for (const t of ticks(1, x1, 8, true)) {
    el("line", { x1: X(t), x2: X(t), y1: H - B, y2: H - B + 4 }, axis);
    el("text", { x: X(t), y: H - B + 16, "text-anchor": "middle" }, axis, String(t));
  }
  el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B }, axis);
  el("text", { x: (L + W - R) / 2, y: H - 2, "text-anchor": "middle" }, axis, "round");
  for (const s of series) {
    const points = s.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    el("polyline", { points, fill: "none", stroke: s.colour, "stroke-width": 2,
      "data-node": s.id, "data-points": s.points.length }, svg);
    for (const p of s.points) el("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.2, fill: s.colour }, svg);
  }
}

// Per node, its rows in round order.
function byNode(nodes, rounds) {
  return nodes.map((n) => ({ id: n.id, rows: rounds.filter((r) => r.node === n.id).sort((a, b) => a.round - b.round) }));
}

// SNR to colour on one fixed scale (red at 0 dB and below, green from 30 dB), so a
// colour means the same in every round and every run.
const snrColour = (snr) => `hsl(${Math.round(120 * Math.min(1, Math.max(0, snr / 30)))}, 65%, 42%)`;

// The devices where they were in the round (they move with mobility), and each
// neighbour pair drawn by the weaker direction's SNR that round; outage dashed.
function topology(svg, nodes, radio, rounds) {
  clear(svg);
  const W = 440, H = 320, M = 30;
  const positions = radio ? radio.positions : nodes.map((n) => n.position);
  const placed = nodes.filter((n) => positions[n.id]);
  if (placed.length === 0) { el("text", { x: 10, y: 20 }, svg, "positions not known yet"); return; }
  const px = placed.map((n) => positions[n.id][0]), py = placed.map((n) => positions[n.id][1]);
  const [x0, x1, y0, y1] = [Math.min(...px), Math.max(...px), Math.min(...py), Math.max(...py)];
  const s = Math.min((W - 2 * M) / Math.max(x1 - x0, 1e-9), (H - 2 * M) / Math.max(y1 - y0, 1e-9));
  const at = (id) => [M + (positions[id][0] - x0) * s, H - M - (positions[id][1] - y0) * s];
  const pairs = new Map();
  for (const l of radio ? radio.links : []) {
    const key = `${Math.min(l.from, l.to)}-${Math.max(l.from, l.to)}`;
    const seen = pairs.get(key);
    if (!seen || l.snr_db < seen.snr_db) pairs.set(key, l);
  }
  // With a radio policy (policy.jsonl): who exchanged this round, and at what power.
  const policy = radio && radio.policy;
  const power = new Map();
  for (const s of policy ? policy.senders : []) {
    s.receivers.forEach((to, i) => power.set(`${s.node}>${to}`, s.power_dbm.length === 1 ? s.power_dbm[0] : s.power_dbm[i]));
  }
  const dbm = (from, to) => power.has(`${from}>${to}`) ? `${power.get(`${from}>${to}`).toFixed(1)} dBm` : null;
  for (const [key, l] of pairs) {
    if (!positions[l.from] || !positions[l.to]) continue;
    const [ax, ay] = at(l.from), [bx, by] = at(l.to);
    const q = Math.min(1, Math.max(0, l.snr_db / 30));
    const chosen = !policy || power.has(`${l.from}>${l.to}`) || power.has(`${l.to}>${l.from}`);
    const line = el("line", { x1: ax, y1: ay, x2: bx, y2: by, "data-link": key, "data-snr": l.snr_db.toFixed(2),
      "data-chosen": String(chosen),
      stroke: l.outage ? "#999" : snrColour(l.snr_db), "stroke-width": 1 + 2 * q, opacity: chosen ? 0.8 : 0.12,
      "stroke-dasharray": l.outage ? "4 3" : "none" }, svg);
    const powers = [dbm(l.from, l.to) && `${l.from}→${l.to} at ${dbm(l.from, l.to)}`,
      dbm(l.to, l.from) && `${l.to}→${l.from} at ${dbm(l.to, l.from)}`].filter(Boolean);
    el("title", {}, line, `${key}: ${l.snr_db.toFixed(1)} dB this round (${l.mean_snr_db.toFixed(1)} dB long-term), ` +
      (l.outage ? "outage" : `${(l.rate_bps / 1e6).toFixed(2)} Mbit/s`) +
      (policy ? (chosen ? `; ${powers.join(", ")}` : "; not chosen this round") : ""));
  }
  if (radio) {
    svg.dataset.round = radio.round;
    el("text", { x: W - 4, y: 14, "text-anchor": "end" }, svg, `round ${radio.round}, t = ${radio.emulated_s.toFixed(1)} s`);
    if (policy) el("text", { x: W - 4, y: 28, "text-anchor": "end", class: "policy" }, svg, "faint: not chosen this round (policy.jsonl)");
  }
  const last = Math.max(0, ...rounds.map((r) => r.round));
  for (const n of placed) {
    const [x, y] = at(n.id);
    const g = el("g", { class: `node ${n.status}`, "data-node": n.id, "data-status": n.status }, svg);
    el("circle", { cx: x, cy: y, r: 11, fill: colour(n.id) }, g);
    el("text", { x, y: y + 4, "text-anchor": "middle", fill: "#fff" }, g, String(n.id));
    const row = rounds.find((r) => r.node === n.id && r.round === last);
    if (row && row.messages_lost > 0) {
      el("circle", { class: "lost", cx: x + 10, cy: y - 10, r: 6 }, g);
      el("text", { x: x + 10, y: y - 6.5, "text-anchor": "middle", fill: "#fff" }, g, String(row.messages_lost));
    }
  }
}

function split(svg, rounds) {
  clear(svg);
  const W = 440, H = 260, L = 46, R = 10, T = 10, B = 30;
  const last = Math.max(0, ...rounds.map((r) => r.round));
  const per = [];
  for (let k = 1; k <= last; k++) {
    const rows = rounds.filter((r) => r.round === k);
    if (rows.length === 0) continue;
    const mean = (f) => rows.reduce((s, r) => s + f(r), 0) / rows.length;
    per.push([k, mean((r) => r.compute_ms), mean((r) => r.exchange_ms), mean((r) => r.wait_ms)]);
  }
  if (per.length === 0) return;
  const y1 = Math.max(1, ...per.map((p) => p[1] + p[2] + p[3]));
  const bw = (W - L - R) / Math.max(per.length, 1);
  const Y = (y) => H - B - (H - T - B) * y / y1;
  const axis = el("g", { class: "axis" }, svg);
  for (const t of ticks(0, y1, 5, false)) {
    el("line", { class: "grid", x1: L, x2: W - R, y1: Y(t), y2: Y(t) }, axis);
    el("text", { x: L - 4, y: Y(t) + 4, "text-anchor": "end" }, axis, fmt(t));
  }
  const every = ticks(1, last, 8, true);
  per.forEach((p, i) => {
    let base = 0;
    [["#4e79a7", p[1]], ["#f28e2b", p[2]], ["#bab0ac", p[3]]].forEach(([c, v]) => {
      el("rect", { x: L + i * bw + 1, width: Math.max(bw - 2, 1), y: Y(base + v), height: Y(base) - Y(base + v), fill: c }, svg);
      base += v;
    });
    if (every.includes(p[0])) el("text", { x: L + (i + 0.5) * bw, y: H - B + 16, "text-anchor": "middle" }, axis, String(p[0]));
  });
  el("text", { x: (L + W - R) / 2, y: H - 2, "text-anchor": "middle" }, axis, "round");
}

// The rows drawn so far: each redraw asks only for the rounds closed since.
let rounds = [];

async function load() {
  const get = (p) => fetch(`/api/${p}`).then((r) => { if (!r.ok) throw new Error(`${p}: ${r.status}`); return r.json(); });
  const since = Math.max(0, ...rounds.map((r) => r.round));
  // The links are the placement's: read once they exist.
  const run = await get("run");
  if (run.kind === "compare") return loadCompare(run, get);
  // This round's radio (null without an emulated radio).
  const [nodes, fresh, radio, membership] = await Promise.all([get("nodes"),
    get(`rounds?since=${since}`), get("radio"), get("membership")]);
  // A coordinator that resumed from an earlier round (or another run): start over.
  // Keyed by (round, node): two redraws racing never draw a row twice.
  const rows = new Map((run.rounds_closed < since ? await get("rounds") : rounds.concat(fresh))
    .map((r) => [`${r.round}:${r.node}`, r]));
  // Rows of a round that closed after /api/run answered wait for the next redraw, so
  // the charts and the header show the same round.
  rounds = [...rows.values()].filter((r) => r.round <= run.rounds_closed);
  document.getElementById("title").textContent = `${run.run_id} · ${run.algorithm} · ${run.nodes} nodes`;
  document.getElementById("progress").textContent =
    `round ${run.rounds_closed}/${run.rounds_planned} · ${run.live ? "live" : run.finished ? "finished" : "ended early"}`;
  document.body.dataset.rounds = run.rounds_closed;
  topology(document.getElementById("topology"), nodes, radio, rounds);
  const per = byNode(nodes, rounds);
  const series = (f) => per.map((n) => ({ id: n.id, colour: colour(n.id), points: f(n.rows) }));
  lineChart(document.getElementById("accuracy"), series((rows) => rows.map((r) => [r.round, 100 * r.test_accuracy])));
  lineChart(document.getElementById("loss"), series((rows) => rows.map((r) => [r.round, r.train_loss])), 0);
  // Cumulative series as the server sums them (coordinator/src/metrics.rs).
  lineChart(document.getElementById("energy"), series((rows) => rows.map((r) => [r.round, r.totals.radio_energy_j])), 0);
  lineChart(document.getElementById("airtime"), series((rows) => rows.map((r) => [r.round, r.totals.airtime_s])), 0);
  // The privacy spent: only a run whose nodes train with DP-SGD reports it.
  const privateRun = rounds.some((r) => r.epsilon != null);
  document.getElementById("privacy").hidden = !privateRun;
  if (privateRun) {
    lineChart(document.getElementById("epsilon"), series((rows) => rows.filter((r) => r.epsilon != null).map((r) => [r.round, r.epsilon])), 0);
  }
  split(document.getElementById("split"), rounds);
  const legend = document.getElementById("legend");
  legend.replaceChildren(...nodes.map((n) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colour(n.id);
    span.append(swatch, `node ${n.id} (${n.model})`);
    return span;
  }));
  const members = document.getElementById("members");
  members.replaceChildren(...nodes.map((n) => {
    const li = document.createElement("li");
    const own = rounds.filter((r) => r.node === n.id);
    const newest = own.reduce((a, r) => (a && a.round > r.round ? a : r), null);
    const spent = newest && newest.epsilon != null ? `, ε = ${newest.epsilon.toFixed(2)}` : "";
    li.textContent = `node ${n.id}: ${n.model}, ${n.parameters} parameters, ${n.status}, ${own.length} rounds reported${spent}`;
    li.dataset.status = n.status;
    return li;
  }));
  document.getElementById("membership").replaceChildren(...membership.map((e) => {
    const li = document.createElement("li");
    li.textContent = `round ${e.round}: node ${e.node} ${e.event}${e.reason ? ` (${e.reason})` : ""}`;
    return li;
  }));
  return run;
}

// Algorithms by the colours of the figures: DML red, FedAvg blue, local grey, FedMD orange, DS-FL green.
const ALGORITHM_COLOURS = { dml: "#d62728", fedavg: "#1f77b4", local: "#7f7f7f", fedmd: "#ff7f0e", dsfl: "#2ca02c" };

// A comparison: each algorithm's mean accuracy and radio costs against rounds, side by
// side, from the same curve `wdml compare` writes to comparison.json.
async function loadCompare(run, get) {
  const algorithms = await get("compare");
  document.getElementById("run").hidden = true;
  document.getElementById("compare").hidden = false;
  document.title = `WDML comparison ${run.run_id}`;
  document.getElementById("title").textContent = `${run.run_id} · ${run.algorithm} · ${run.nodes} nodes`;
  document.getElementById("progress").textContent =
    `${run.rounds_closed}/${run.rounds_planned} rounds over the algorithms · ${run.live ? "live" : "finished"}`;
  document.body.dataset.rounds = run.rounds_closed;
  const series = (f) => algorithms.map((a) => ({ id: a.algorithm, colour: ALGORITHM_COLOURS[a.algorithm] || "#9467bd",
    points: a.curve.map((p) => [p.round, f(p)]) }));
  lineChart(document.getElementById("c-accuracy"), series((p) => 100 * p.mean_accuracy));
  lineChart(document.getElementById("c-energy"), series((p) => p.cumulative_energy_j), 0);
  lineChart(document.getElementById("c-airtime"), series((p) => p.cumulative_airtime_s), 0);
  const rows = algorithms.map((a) => {
    const last = a.curve[a.curve.length - 1];
    const tr = document.createElement("tr");
    tr.dataset.algorithm = a.algorithm;
    const state = a.finished ? "finished" : a.ended ? "ended early" : a.curve.length ? "running" : "waiting";
    for (const text of [a.algorithm, `${a.curve.length}/${a.rounds_planned}`, state,
      last ? `${(100 * last.mean_accuracy).toFixed(2)} %` : "–",
      last ? fmt(last.cumulative_energy_j) : "–", last ? fmt(last.cumulative_airtime_s) : "–"]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    tr.firstChild.style.color = ALGORITHM_COLOURS[a.algorithm] || "#9467bd";
    return tr;
  });
  document.getElementById("c-table").replaceChildren(...rows);
  return run;
}

function follow() {
  const events = new EventSource("/api/events");
  // Opened (or opened again after a break): catch up on what closed meanwhile.
  events.addEventListener("open", () => load().catch(report));
  events.addEventListener("round", () => load().catch(report));
  // The coordinator exits once the run is over: a last reading may find it gone.
  events.addEventListener("finished", () => {
    events.close();
    load().catch(() => {
      document.getElementById("progress").textContent =
        "finished; the coordinator has exited (wdml view RUN_DIR reopens the run)";
    });
  });
}

function report(e) { document.getElementById("progress").textContent = `cannot read the run: ${e.message}`; }

// Live: follow the rounds as they close (from a second after the first drawing, so a
// headless browser can take the page as drawn before a stream that never ends opens);
// a finished run has nothing more to say.
load().then((run) => { if (run.live) setTimeout(follow, 1000); }).catch(report);
