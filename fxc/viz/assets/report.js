// fxc report: draws the stages that report.py laid out. No dependencies, no network.
// State lives in the URL hash (#stage=3&node=relu_4&color=fusion), so a view can be shared.
"use strict";
(function () {
const D = JSON.parse(document.getElementById("fxc-data").textContent);
const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const R = {name: 0, op: 1, label: 2, kind: 3, family: 4, meta: 5, prec: 6, src: 7, module: 8, consts: 9, w: 10, h: 11, args: 12, short: 13};

const FAMILY = {
  input: ["#16a34a", "graph input"], output: ["#334155", "graph output"], fused: ["#db2777", "fxc fused op"],
  conv: ["#2563eb", "convolution"], matmul: ["#4f46e5", "matmul / linear"], attention: ["#9333ea", "attention"],
  norm: ["#0d9488", "normalization"], activation: ["#d97706", "activation"], pool: ["#0891b2", "pooling"],
  reduce: ["#ea580c", "reduction"], embedding: ["#65a30d", "embedding / gather"],
  elementwise: ["#64748b", "elementwise"], shape: ["#94a3b8", "view / shape / copy"], other: ["#a8a29e", "other"],
};
const PRECISION = {fp32: "#2563eb", fp16: "#ea580c", bf16: "#9333ea", fp64: "#0f766e", int: "#64748b", bool: "#a16207", mixed: "#db2777", "-": "#cbd5e1"};
const GROUP_COLORS = ["#db2777", "#2563eb", "#16a34a", "#ea580c", "#9333ea", "#0891b2", "#ca8a04", "#dc2626", "#4f46e5", "#0d9488"];
const FAR = 0.45;  // below this zoom, labels are not drawn at all

const st = {stage: D.stages.length - 1, mode: "family", changes: true, sel: null, found: [], foundAt: 0,
            tx: 0, ty: 0, k: 1, tab: "graph"};
let view = null;  // what is drawn: {stage, lay, recs, nodeEls, edgeEls, byName, users}

// ---------- helpers ----------
function rec(i) { return D.records[i]; }
function str(i) { return D.strings[i] || ""; }
function tint(hex, a) {  // hex colour mixed with white: a = share of the colour
  const n = parseInt(hex.slice(1), 16), r = n >> 16, g = (n >> 8) & 255, b = n & 255;
  const m = (c) => Math.round(255 - (255 - c) * a);
  return `rgb(${m(r)},${m(g)},${m(b)})`;
}
function groupLabels() {
  const labels = [...new Set(D.groups.map((g) => g.label))].sort();
  return Object.fromEntries(labels.map((l, i) => [l, GROUP_COLORS[i % GROUP_COLORS.length]]));
}
const GROUP_COLOR = groupLabels();
function colorOf(stage, i) {
  const r = rec(stage.nodes[i]);
  if (st.mode === "precision") return PRECISION[r[R.prec]] || "#a8a29e";
  if (st.mode === "fusion") {
    const g = stage.group[i];
    return g >= 0 ? GROUP_COLOR[D.groups[g].label] : null;
  }
  return (FAMILY[r[R.family]] || FAMILY.other)[0];
}
function fmtMs(ms) { return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : ms.toFixed(1); }
function fmtBytes(b) {
  if (b >= 1 << 30) return (b / (1 << 30)).toFixed(2) + " GiB";
  if (b >= 1 << 20) return (b / (1 << 20)).toFixed(2) + " MiB";
  if (b >= 1 << 10) return (b / (1 << 10)).toFixed(1) + " KiB";
  return b + " B";
}
function el(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}

// ---------- hash state ----------
function readHash() {  // what the hash does not say is the default
  const p = new URLSearchParams(location.hash.slice(1));
  st.stage = D.stages.length - 1;
  if (p.has("stage")) {
    const v = p.get("stage"), byName = D.stages.findIndex((s) => s.name === v);
    const idx = /^\d+$/.test(v) ? +v : byName;
    if (idx >= 0 && idx < D.stages.length) st.stage = idx;
  }
  st.mode = ["family", "fusion", "precision"].includes(p.get("color")) ? p.get("color") : "family";
  st.changes = p.get("changes") !== "0";
  st.tab = ["graph", "memory", "code"].includes(p.get("tab")) ? p.get("tab") : "graph";
  st.sel = p.get("node") || null;
}
function writeHash() {
  const p = new URLSearchParams();
  p.set("stage", st.stage);
  if (st.mode !== "family") p.set("color", st.mode);
  if (!st.changes) p.set("changes", "0");
  if (st.tab !== "graph") p.set("tab", st.tab);
  if (st.sel) p.set("node", st.sel);
  const h = "#" + p.toString();
  if (h !== location.hash) history.replaceState(null, "", h);
}

// ---------- header, sidebar ----------
function header() {
  $("title").textContent = D.title;
  const h = D.header, bits = [];
  if (h.device) bits.push(h.device, h.precision, "backend " + h.backend);
  bits.push(D.stages.length + " stages", "generated " + D.generated);
  $("subtitle").textContent = bits.join("  ·  ");
}
function stageDelta(s) {
  const k = D.stages.indexOf(s);
  return {add: s.added.length, rm: s.removed.length, ch: s.changed.length,
          consts: k > 0 ? s.constants - D.stages[k - 1].constants : 0};
}
function stageList() {
  const ol = $("stages");
  ol.innerHTML = "";
  D.stages.forEach((s, k) => {
    const li = document.createElement("li"), d = stageDelta(s);
    const same = k > 0 && !d.add && !d.rm && !d.ch && !d.consts;
    li.className = (k === st.stage ? "on" : "") + (same ? " same" : "");
    li.dataset.stage = k;
    const chips = [];
    if (d.add) chips.push(`<span class="chip-add">+${d.add}</span>`);
    if (d.rm) chips.push(`<span class="chip-rm">−${d.rm}</span>`);
    if (d.ch) chips.push(`<span class="chip-ch">~${d.ch}</span>`);
    if (d.consts) chips.push(`<span class="chip-c" title="constants (parameters, buffers)">${d.consts > 0 ? "+" : "−"}${Math.abs(d.consts)}c</span>`);
    if (same) chips.length = 0;
    li.title = same ? "this pass changed nothing" : "";
    li.innerHTML = `<span class="idx">${String(k).padStart(2, "0")}</span><span class="nm">${esc(s.name)}</span>` +
      `<span class="chips">${chips.join("")}</span><span class="cnt">${s.nodes.length}</span>`;
    li.onclick = () => setStage(k);
    ol.appendChild(li);
  });
}
function passTable() {
  const tb = $("passes").tBodies[0];
  tb.innerHTML = "";
  const maxPass = Math.max(1, ...D.passes.filter((p) => p.stage != null && p.name !== "capture" && p.ms != null).map((p) => p.ms));
  for (const p of D.passes) {
    const tr = document.createElement("tr");
    const total = p.name === "total";
    tr.className = (p.skipped ? "skip" : "") + (total ? " total" : "") + (p.stage != null ? " link" : "") + (p.stage === st.stage ? " on" : "");
    const heavy = p.ms != null && !total && p.name !== "capture" && p.ms >= 0.25 * maxPass ? " heavy" : "";
    tr.innerHTML = `<td title="${esc(p.skipped || p.notes || "")}">${esc(p.name)}</td>` +
      `<td class="${heavy}">${p.ms != null ? fmtMs(p.ms) : "–"}</td><td>${p.rewrites != null ? p.rewrites : "–"}</td><td>${p.nodes != null ? p.nodes : ""}</td>`;
    if (p.stage != null) tr.onclick = () => setStage(p.stage);
    tb.appendChild(tr);
    if (p.notes || p.skipped) {
      const nt = document.createElement("tr");
      nt.className = "note" + (p.skipped ? " skip" : "");
      nt.innerHTML = `<td colspan="4">${esc(p.skipped ? "skipped: " + p.skipped : p.notes)}</td>`;
      tb.appendChild(nt);
    }
  }
}
function artifacts() {
  const a = $("artifacts"), o = D.onnx;
  let h = "<h2>Files beside this report</h2><p><code>NN_&lt;stage&gt;.py</code> · <code>.txt</code>: each stage as fx code and as a node table.</p>";
  h += o.file ? `<p><code>${esc(o.file)}</code>: ${esc(o.note)}. Open it in Netron.</p>` : `<p>No ONNX model: ${esc(o.note || "not lowered")}.</p>`;
  a.innerHTML = h;
  const sec = $("sections");
  if (!D.sections.length) { sec.remove(); return; }
  sec.innerHTML = "<h2>Report notes</h2>" + D.sections.map(([t, lines]) =>
    `<details><summary>${esc(t)}</summary><pre>${esc(lines.join("\n"))}</pre></details>`).join("");
}

// ---------- legend ----------
function legend() {
  const s = D.stages[st.stage], lg = $("legend"), counts = {};
  let items = [];
  if (st.mode === "family") {
    s.nodes.forEach((r) => { const f = rec(r)[R.family]; counts[f] = (counts[f] || 0) + 1; });
    items = Object.keys(FAMILY).filter((f) => counts[f]).map((f) => [FAMILY[f][0], FAMILY[f][1], counts[f]]);
  } else if (st.mode === "precision") {
    s.nodes.forEach((r) => { const p = rec(r)[R.prec]; counts[p] = (counts[p] || 0) + 1; });
    items = Object.keys(PRECISION).filter((p) => counts[p]).map((p) => [PRECISION[p], p === "-" ? "no tensor" : p, counts[p]]);
  } else {
    s.group.forEach((g) => { if (g >= 0) { const l = D.groups[g].label; counts[l] = (counts[l] || 0) + 1; } });
    items = Object.keys(GROUP_COLOR).map((l) => [GROUP_COLOR[l], l, counts[l] || 0]);
    items.push(["#cbd5e1", "not in a fusion group", s.group.filter((g) => g < 0).length, " wide"]);
  }
  let h = items.map(([c, t, n, cls]) => `<div class="item${cls || ""}" title="${esc(t)}"><span class="sw" style="background:${tint(c, .18)};border-color:${c}"></span>${esc(t)}<span class="n">${n}</span></div>`).join("");
  if (st.mode === "fusion" && !D.groups.length) h = `<div class="item wide">No fusion happened in this compile.</div>`;
  if (st.changes) {
    const prev = st.stage > 0 ? s.name : null, next = D.stages[st.stage + 1];
    if (prev) h += `<div class="item wide"><span class="ring" style="border-color:var(--added)"></span>added by ${esc(prev)}<span class="n">${s.added.length}</span></div>` +
      `<div class="item wide"><span class="ring dot" style="border-color:var(--changed)"></span>changed by ${esc(prev)}<span class="n">${s.changed.length}</span></div>`;
    if (next) h += `<div class="item wide"><span class="ring dash" style="border-color:var(--removed)"></span>removed by ${esc(next.name)} (next)<span class="n">${s.removedNext.length}</span></div>`;
  }
  lg.innerHTML = h;
}

// ---------- drawing the graph ----------
function curve(p) {  // polyline through the layout's points -> smooth vertical bezier path
  let d = `M${p[0]},${p[1]}`;
  for (let i = 2; i < p.length; i += 2) {
    const x0 = p[i - 2], y0 = p[i - 1], x1 = p[i], y1 = p[i + 1], my = (y0 + y1) / 2;
    d += x0 === x1 ? `L${x1},${y1}` : `C${x0},${my} ${x1},${my} ${x1},${y1}`;
  }
  return d;
}
function draw() {
  const t0 = performance.now();
  const s = D.stages[st.stage], lay = D.layouts[s.layout];
  const gE = $("edges"), gN = $("nodes"), gH = $("hulls");
  gE.textContent = ""; gN.textContent = ""; gH.textContent = "";
  const added = new Set(s.added), changed = new Set(s.changed), removedNext = new Set(s.removedNext);
  const parts = [];
  s.edges.forEach((e, i) => parts.push(`<path class="edge" data-e="${i}" d="${curve(lay.paths[i])}"/>`));
  gE.innerHTML = parts.join("");
  const np = [];
  s.nodes.forEach((ri, i) => {
    const r = rec(ri), w = r[R.w], h = r[R.h], x = lay.x[i] - w / 2, y = lay.y[i] - h / 2;
    const c = colorOf(s, i), col = c || "#cbd5e1", kind = r[R.kind];
    let ring = "", ring2 = "";
    if (st.changes) {
      if (added.has(i)) ring = "added"; else if (changed.has(i)) ring = "changed";
      if (removedNext.has(i)) ring2 = "removed";
    }
    const dim = st.mode === "fusion" && !c ? " dim" : "";
    let body;
    if (kind === "getitem") {
      body = `<rect class="box" x="${x}" y="${y}" width="${w}" height="${h}" rx="${h / 2}" fill="${tint(col, .12)}" stroke="${col}"/>`;
    } else {
      const rx = kind === "op" ? 6 : h / 2;
      body = `<rect class="box" x="${x}" y="${y}" width="${w}" height="${h}" rx="${rx}" fill="${tint(col, kind === "op" ? .13 : .22)}" stroke="${col}"/>` +
        (kind === "op" ? `<rect class="acc" x="${x}" y="${y}" width="4" height="${h}" rx="2" fill="${col}"/>` : "");
    }
    if (ring) body += `<rect class="ring ${ring}" x="${x - 3}" y="${y - 3}" width="${w + 6}" height="${h + 6}" rx="8"/>`;
    if (ring2) { const o = ring ? 7 : 3; body += `<rect class="ring ${ring2}" x="${x - o}" y="${y - o}" width="${w + 2 * o}" height="${h + 2 * o}" rx="${6 + o}"/>`; }
    np.push(`<g class="node ${kind}${dim}" data-i="${i}" data-name="${esc(r[R.name])}">${body}</g>`);
  });
  gN.innerHTML = np.join("");
  if (st.mode === "fusion") hulls(s, lay, gH);
  const users = s.nodes.map(() => []), ins = s.nodes.map(() => []);
  s.edges.forEach(([a, b], i) => { users[a].push([b, i]); ins[b].push([a, i]); });
  const byY = s.nodes.map((_, i) => i).sort((a, b) => lay.y[a] - lay.y[b]);
  view = {stage: s, lay, users, ins, byName: new Map(s.nodes.map((r, i) => [rec(r)[R.name], i])),
          nodeEls: gN.children, edgeEls: gE.children, byY, ys: byY.map((i) => lay.y[i])};
  labelled = null;
  $("labels").textContent = "";
  const svg = $("graph");
  svg.dataset.stage = st.stage;
  svg.dataset.stageName = s.name;
  svg.dataset.nodes = s.nodes.length;  // the stage's graph; tests compare it with the DOM
  svg.dataset.edges = s.edges.length;
  svg.dataset.drawMs = (performance.now() - t0).toFixed(1);
  banner();
  minimapBase();
}
// Labels are drawn only near the viewport, and not at all when zoomed out: text is what
// makes a large SVG slow to pan (every transform change lays all of it out again).
let labelled = null;  // the graph-space rectangle whose nodes have labels now
function labelHtml(i) {
  const r = rec(view.stage.nodes[i]), x = view.lay.x[i], y = view.lay.y[i], w = r[R.w];
  const dim = st.mode === "fusion" && view.stage.group[i] < 0 ? " dim" : "";
  if (r[R.kind] === "getitem") return `<text class="lbl gi${dim}" x="${x}" y="${y + 3.5}">${esc(r[R.label])}</text>`;
  return `<text class="lbl op${dim}" x="${x}" y="${y - (r[R.meta] ? 2 : -4)}">${esc(trim(r[R.label], w, 7.4))}</text>` +
    (r[R.meta] ? `<text class="lbl meta${dim}" x="${x}" y="${y + 12}">${esc(trim(r[R.short], w, 6.1))}</text>` : "");
}
function viewRect() {
  const r = $("graph").getBoundingClientRect();
  return [-st.tx / st.k, -st.ty / st.k, (r.width - st.tx) / st.k, (r.height - st.ty) / st.k];
}
function lowerBound(a, v) {
  let lo = 0, hi = a.length;
  while (lo < hi) { const m = (lo + hi) >> 1; if (a[m] < v) lo = m + 1; else hi = m; }
  return lo;
}
function updateLabels() {
  const g = $("labels");
  if (!view || st.k < FAR) {
    if (labelled) { g.textContent = ""; labelled = null; $("graph").dataset.labels = 0; }
    return;
  }
  const v = viewRect();
  if (labelled && v[0] >= labelled[0] && v[1] >= labelled[1] && v[2] <= labelled[2] && v[3] <= labelled[3]) return;
  const mw = (v[2] - v[0]) / 2, mh = (v[3] - v[1]) / 2;  // half a screen of margin around
  labelled = [v[0] - mw, v[1] - mh, v[2] + mw, v[3] + mh];
  const parts = [], lo = lowerBound(view.ys, labelled[1] - 30), hi = lowerBound(view.ys, labelled[3] + 30);
  let n = 0;
  for (let j = lo; j < hi; j++) {
    const i = view.byY[j], x = view.lay.x[i];
    if (x >= labelled[0] - 130 && x <= labelled[2] + 130) { parts.push(labelHtml(i)); n++; }
  }
  g.innerHTML = parts.join("");
  $("graph").dataset.labels = n;
}
function trim(text, w, cw) {  // cut a label to the box (approximate glyph width cw)
  const n = Math.floor((w - 14) / cw);
  return text.length > n ? text.slice(0, Math.max(1, n - 1)) + "…" : text;
}
function hulls(s, lay, g) {  // a soft box behind the nodes of one fusion group, in this stage
  const box = new Map();
  s.group.forEach((gi, i) => {
    if (gi < 0) return;
    const r = rec(s.nodes[i]), w = r[R.w] / 2 + 8, h = r[R.h] / 2 + 8;
    const b = box.get(gi) || [1e9, 1e9, -1e9, -1e9, 0];
    box.set(gi, [Math.min(b[0], lay.x[i] - w), Math.min(b[1], lay.y[i] - h), Math.max(b[2], lay.x[i] + w), Math.max(b[3], lay.y[i] + h), b[4] + 1]);
  });
  const parts = [];
  for (const [gi, b] of box) {
    if (b[4] < 2) continue;
    const c = GROUP_COLOR[D.groups[gi].label];
    parts.push(`<rect class="hull" x="${b[0]}" y="${b[1]}" width="${b[2] - b[0]}" height="${b[3] - b[1]}" rx="12" fill="${tint(c, .1)}" stroke="${tint(c, .45)}"/>`);
  }
  g.innerHTML = parts.join("");
}
function banner() {
  const s = D.stages[st.stage], d = stageDelta(s);
  let what = st.stage === 0 ? "the graph as captured" : (d.add || d.rm || d.ch ?
    `+${d.add} added, −${d.rm} removed, ~${d.ch} changed` : (d.consts ? "only constants changed" : "this pass changed nothing"));
  if (st.stage > 0 && d.consts) what += ` (${d.consts > 0 ? "+" : "−"}${Math.abs(d.consts)} constants)`;
  const ops = s.nodes.filter((r) => rec(r)[R.kind] === "op").length;
  $("stage-banner").innerHTML = `<b>${String(st.stage).padStart(2, "0")} ${esc(s.name)}</b> &nbsp;${s.nodes.length} nodes (${ops} ops) · ${s.edges.length} edges · ${s.constants} constants &nbsp;—&nbsp; ${what}`;
}

// ---------- pan & zoom ----------
let raf = 0;
function applyTransform() {
  if (raf) return;
  raf = requestAnimationFrame(() => {
    raf = 0;
    $("vp").setAttribute("transform", `translate(${st.tx},${st.ty}) scale(${st.k})`);
    $("graph").classList.toggle("far", st.k < FAR);
    updateLabels();
    $("zoom-level").textContent = Math.round(st.k * 100) + "%";
    minimapView();
  });
}
function zoomAt(px, py, f) {
  const k = Math.min(4, Math.max(0.01, st.k * f));
  st.tx = px - (px - st.tx) * k / st.k; st.ty = py - (py - st.ty) * k / st.k; st.k = k;
  applyTransform();
}
let pending = null;  // a fit or centring asked for while the graph tab was hidden
function fit(all) {
  const r = $("graph").getBoundingClientRect(), lay = view.lay, pad = 40;
  if (r.width < 10) { pending = () => fit(all); return; }
  const kAll = Math.min((r.width - pad) / Math.max(lay.width, 1), (r.height - pad) / Math.max(lay.height, 1));
  // By default: readable labels, from the top; `all`: the whole graph, however small.
  st.k = all ? Math.min(1.5, kAll) : Math.min(1.1, Math.max(kAll, Math.min(0.9, (r.width - pad) / Math.max(lay.width, 1))));
  st.tx = (r.width - lay.width * st.k) / 2;
  st.ty = lay.height * st.k < r.height ? (r.height - lay.height * st.k) / 2 : 56;
  applyTransform();
}
function centreOn(i, k) {
  const r = $("graph").getBoundingClientRect();
  if (r.width < 10) { pending = () => centreOn(i, k); return; }
  if (k) st.k = k;
  st.tx = r.width / 2 - view.lay.x[i] * st.k; st.ty = r.height / 2 - view.lay.y[i] * st.k;
  applyTransform();
}
function panZoom() {
  const svg = $("graph");
  let drag = null;
  svg.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = svg.getBoundingClientRect();
    const f = Math.exp(-e.deltaY * (e.ctrlKey ? 0.01 : 0.0015));
    zoomAt(e.clientX - r.left, e.clientY - r.top, f);
  }, {passive: false});
  svg.addEventListener("pointerdown", (e) => {
    // the node is read here: once the svg captures the pointer, events target the svg
    const g = e.target.closest && e.target.closest(".node");
    drag = {x: e.clientX, y: e.clientY, tx: st.tx, ty: st.ty, moved: false, node: g};
    svg.setPointerCapture(e.pointerId);
    svg.classList.add("dragging");
  });
  svg.addEventListener("pointermove", (e) => {
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      st.tx = drag.tx + dx; st.ty = drag.ty + dy; applyTransform();
      hideTip();
      return;
    }
    const g = e.target.closest && e.target.closest(".node");
    if (g) showTip(+g.dataset.i, e); else hideTip();
  });
  svg.addEventListener("pointerup", (e) => {
    svg.classList.remove("dragging");
    const d = drag;
    drag = null;
    if (!d || d.moved) return;
    select(d.node ? rec(view.stage.nodes[+d.node.dataset.i])[R.name] : null, false);
  });
  svg.addEventListener("pointerleave", hideTip);
  const r = () => svg.getBoundingClientRect();
  $("zoom-in").onclick = () => zoomAt(r().width / 2, r().height / 2, 1.4);
  $("zoom-out").onclick = () => zoomAt(r().width / 2, r().height / 2, 1 / 1.4);
  $("zoom-fit").onclick = () => fit(true);
  window.addEventListener("resize", () => { minimapBase(); applyTransform(); });
}

// ---------- tooltip ----------
function showTip(i, e) {
  const r = rec(view.stage.nodes[i]), tip = $("tip"), box = $("view-graph").getBoundingClientRect();
  let h = `<div class="t">${esc(r[R.name])}</div><div class="m">${esc(r[R.op])}</div>`;
  if (r[R.meta]) h += `<div class="m">${esc(r[R.meta])} · ${esc(r[R.prec])}</div>`;
  if (str(r[R.module])) h += `<div class="m">${esc(str(r[R.module]))}</div>`;
  if (str(r[R.src])) h += `<div class="s">${esc(str(r[R.src]))}</div>`;
  const g = view.stage.group[i];
  if (g >= 0 && D.groups[g].node !== r[R.name]) h += `<div class="f">fused into ${esc(D.groups[g].node)} (${esc(D.groups[g].label)})</div>`;
  else if (g >= 0) h += `<div class="f">fusion of ${D.groups[g].members} earlier nodes</div>`;
  tip.innerHTML = h;
  tip.hidden = false;
  const x = e.clientX - box.left + 16, y = e.clientY - box.top + 14;
  tip.style.left = Math.min(x, box.width - tip.offsetWidth - 8) + "px";
  tip.style.top = Math.min(y, box.height - tip.offsetHeight - 8) + "px";
  for (const el2 of document.querySelectorAll(".edge.hot")) el2.classList.remove("hot");
  for (const [, ei] of view.users[i].concat(view.ins[i])) view.edgeEls[ei].classList.add("hot");
}
function hideTip() {
  $("tip").hidden = true;
  for (const e of document.querySelectorAll(".edge.hot")) e.classList.remove("hot");
}

// ---------- selection & details ----------
function select(name, centre) {
  st.sel = name;
  for (const e of document.querySelectorAll(".node.sel")) e.classList.remove("sel");
  const i = name != null ? view.byName.get(name) : undefined;
  if (i !== undefined) {
    view.nodeEls[i].classList.add("sel");
    if (centre) centreOn(i, Math.max(st.k, 0.9));
  }
  details(i);
  codeMark();
  writeHash();
}
function link(name) { return `<a data-go="${esc(name)}">${esc(name)}</a>`; }
function details(i) {
  const box = $("details"), s = D.stages[st.stage];
  if (i === undefined) { box.innerHTML = stageSummary(s); wire(box); return; }
  const r = rec(s.nodes[i]), fam = FAMILY[r[R.family]] || FAMILY.other;
  let h = `<span class="pill" style="background:${tint(fam[0], .15)};color:${fam[0]}">${esc(fam[1])}</span>`;
  h += `<h3>${esc(r[R.name])}</h3><div class="opfull">${esc(r[R.op])}</div>`;
  h += story(s, i, r);
  h += "<dl>";
  if (r[R.meta]) h += `<dt>output</dt><dd class="mono">${esc(r[R.meta])}</dd>`;
  h += `<dt>precision</dt><dd>${esc(r[R.prec])}</dd>`;
  if (str(r[R.module])) h += `<dt>module</dt><dd class="mono">${esc(str(r[R.module]))}</dd>`;
  if (r[R.args]) h += `<dt>call</dt><dd class="mono">${esc(r[R.args])}</dd>`;
  h += "</dl>";
  if (str(r[R.src])) h += `<h4>Source</h4><div class="src">${esc(str(r[R.src]))}</div>`;
  const ins = view.ins[i], outs = view.users[i];
  if (ins.length) h += "<h4>Inputs</h4><ul class='list'>" + ins.map(([a]) => { const q = rec(s.nodes[a]); return `<li>${link(q[R.name])}<span class="m">${esc(q[R.meta])}</span></li>`; }).join("") + "</ul>";
  if (r[R.consts].length) h += "<h4>Constants</h4><ul class='list'>" + r[R.consts].map(([c, m]) => `<li><span class="mono">${esc(c)}</span><span class="m">${esc(m)}</span></li>`).join("") + "</ul>";
  if (outs.length) h += "<h4>Users</h4><ul class='list'>" + outs.map(([b]) => { const q = rec(s.nodes[b]); return `<li>${link(q[R.name])}<span class="m">${esc(q[R.label])}</span></li>`; }).join("") + "</ul>";
  box.innerHTML = h;
  wire(box);
}
function story(s, i, r) {  // what the passes did to this node, in words
  const out = [], name = r[R.name];
  if (s.added.includes(i)) {
    const from = s.removed.filter(([, by]) => by === name).map(([n]) => n);
    out.push(`<div class="story add"><b>Added by ${esc(s.name)}</b>` + (from.length ? `, replacing ${from.map(esc).join(", ")} (in the stage before)` : "") + ".</div>");
  } else if (s.changed.includes(i)) {
    const from = s.removed.filter(([, by]) => by === name).map(([n]) => n);
    out.push(`<div class="story ch"><b>Changed by ${esc(s.name)}</b>: other inputs, constants or output` + (from.length ? `; it absorbed ${from.map(esc).join(", ")}` : "") + ".</div>");
  }
  if (s.removedNext.includes(i)) {
    const next = D.stages[st.stage + 1], by = s.replacedNext[String(i)];
    out.push(`<div class="story rm"><b>Removed by ${esc(next.name)}</b>` + (by ? `: replaced by ${link(by)} (next stage)` : ": deleted") + ".</div>");
  }
  const g = s.group[i];
  if (g >= 0) {
    const G = D.groups[g];
    out.push(G.node === name ? `<div class="story"><b>Fusion</b>: ${esc(G.label)}, made of ${G.members} nodes of earlier stages.</div>` :
      `<div class="story">Ends up in <b>${esc(G.node)}</b> (${esc(G.label)}) in the final graph.</div>`);
  }
  return out.join("");
}
function stageSummary(s) {
  let h = `<h2>Stage ${st.stage}</h2><h3>${esc(s.name)}</h3><div class="opfull">${s.nodes.length} nodes · ${s.edges.length} edges · ${s.constants} constants</div>`;
  const p = D.passes.find((q) => q.stage === st.stage);
  if (p && p.notes) h += `<div class="story note">${esc(p.notes)}</div>`;
  if (st.stage > 0) {
    const byOp = (list) => { const c = {}; list.forEach((x) => { c[x] = (c[x] || 0) + 1; }); return Object.entries(c).sort((a, b) => b[1] - a[1]); };
    const prev = D.stages[st.stage - 1], prevOp = new Map(prev.nodes.map((r) => [rec(r)[R.name], rec(r)[R.label]]));
    const rmOps = byOp(s.removed.map(([n]) => prevOp.get(n) || "?")), addOps = byOp(s.added.map((i) => rec(s.nodes[i])[R.label]));
    const dc = s.constants - prev.constants;
    if (dc) h += `<p class="hint">Constants: ${prev.constants} → ${s.constants}.</p>`;
    else if (!s.added.length && !s.removed.length && !s.changed.length) h += `<p class="hint">This pass changed nothing.</p>`;
    if (addOps.length) h += "<h4>Added</h4><ul class='list'>" + addOps.map(([o, n]) => `<li><span class="mono">${esc(o)}</span><span class="m">+${n}</span></li>`).join("") + "</ul>";
    if (rmOps.length) h += "<h4>Removed</h4><ul class='list'>" + rmOps.map(([o, n]) => `<li><span class="mono">${esc(o)}</span><span class="m">−${n}</span></li>`).join("") + "</ul>";
    const fused = {};
    s.removed.forEach(([n, by]) => { if (by) (fused[by] = fused[by] || []).push(n); });
    const keys = Object.keys(fused);
    if (keys.length) h += "<h4>Replacements</h4><ul class='list'>" + keys.slice(0, 60).map((k) => `<li>${link(k)}<span class="m">← ${fused[k].length} node${fused[k].length > 1 ? "s" : ""}</span></li>`).join("") + (keys.length > 60 ? `<li class="hint">… ${keys.length - 60} more</li>` : "") + "</ul>";
  }
  h += `<p class="hint">Click a node for its details; drag to pan, wheel to zoom, <b>/</b> to search, <b>F</b> to fit.</p>`;
  return h;
}
function wire(box) {
  for (const a of box.querySelectorAll("a[data-go]")) a.onclick = () => {
    const name = a.dataset.go;
    if (!view.byName.has(name) && st.stage + 1 < D.stages.length) setStage(st.stage + 1, name);
    else select(name, true);
  };
}

// ---------- search ----------
function search(q, step) {
  for (const e of document.querySelectorAll(".node.found")) e.classList.remove("found");
  const info = $("search-info");
  if (!q) { st.found = []; info.textContent = ""; return; }
  const s = D.stages[st.stage], ql = q.toLowerCase();
  const exact = s.nodes.map((r, i) => [rec(r)[R.name], i]).filter(([n]) => n.toLowerCase() === ql).map(([, i]) => i);
  const part = s.nodes.map((r, i) => [rec(r)[R.name], i]).filter(([n]) => n.toLowerCase().includes(ql) && n.toLowerCase() !== ql).map(([, i]) => i);
  st.found = exact.concat(part);
  if (!st.found.length) { info.textContent = "no match"; return; }
  st.foundAt = step ? (st.foundAt + 1) % st.found.length : 0;
  for (const i of st.found) view.nodeEls[i].classList.add("found");
  const i = st.found[st.foundAt];
  info.textContent = `${st.foundAt + 1} / ${st.found.length}`;
  select(rec(s.nodes[i])[R.name], true);
}

// ---------- minimap ----------
let mini = null;
function minimapBase() {
  if (!$("view-graph").clientHeight) return;
  const c = $("minimap"), lay = view.lay, s = view.stage;
  const maxW = 190, maxH = Math.min(260, $("view-graph").clientHeight * 0.4);
  const k = Math.min(maxW / Math.max(lay.width, 1), maxH / Math.max(lay.height, 1));
  const w = Math.max(24, Math.ceil(lay.width * k) + 8), h = Math.max(24, Math.ceil(lay.height * k) + 8);
  const dpr = window.devicePixelRatio || 1;
  c.width = w * dpr; c.height = h * dpr; c.style.width = w + "px"; c.style.height = h + "px";
  const base = document.createElement("canvas");
  base.width = c.width; base.height = c.height;
  const g = base.getContext("2d");
  g.scale(dpr, dpr);
  s.nodes.forEach((ri, i) => {
    const r = rec(ri);
    g.fillStyle = colorOf(s, i) || "#cbd5e1";
    g.fillRect(4 + (lay.x[i] - r[R.w] / 2) * k, 4 + (lay.y[i] - r[R.h] / 2) * k, Math.max(1.5, r[R.w] * k), Math.max(1.5, r[R.h] * k));
  });
  mini = {base, k, dpr};
  minimapView();
}
function minimapView() {
  if (!mini) return;
  const c = $("minimap"), g = c.getContext("2d"), r = $("graph").getBoundingClientRect();
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.clearRect(0, 0, c.width, c.height);
  g.drawImage(mini.base, 0, 0);
  g.scale(mini.dpr, mini.dpr);
  const whole = st.tx >= 0 && st.ty >= 0 && view.lay.width * st.k + st.tx <= r.width && view.lay.height * st.k + st.ty <= r.height;
  c.style.visibility = whole ? "hidden" : "visible";  // nothing to navigate to
  const x = 4 + (-st.tx / st.k) * mini.k, y = 4 + (-st.ty / st.k) * mini.k;
  g.strokeStyle = "#2563eb"; g.lineWidth = 1.5; g.fillStyle = "rgba(37,99,235,.08)";
  g.fillRect(x, y, r.width / st.k * mini.k, r.height / st.k * mini.k);
  g.strokeRect(x, y, r.width / st.k * mini.k, r.height / st.k * mini.k);
}
function minimapNav() {
  const c = $("minimap");
  let down = false;
  const go = (e) => {
    const b = c.getBoundingClientRect(), r = $("graph").getBoundingClientRect();
    const gx = (e.clientX - b.left - 4) / mini.k, gy = (e.clientY - b.top - 4) / mini.k;
    st.tx = r.width / 2 - gx * st.k; st.ty = r.height / 2 - gy * st.k; applyTransform();
  };
  c.addEventListener("pointerdown", (e) => { down = true; c.setPointerCapture(e.pointerId); go(e); });
  c.addEventListener("pointermove", (e) => { if (down) go(e); });
  c.addEventListener("pointerup", () => { down = false; });
}

// ---------- memory plan ----------
function memory() {
  const box = $("view-memory"), M = D.memory;
  if (!M) { box.innerHTML = `<h3>Memory plan</h3><div class="empty">No memory plan: only the torch backend plans an arena (this compile used another backend, or plan_memory was off).</div>`; return; }
  let h = `<h3>Memory plan</h3><div class="sub">Each planned tensor is a bar over the steps it is alive, at its offset in the arena. Strategy <b>${esc(M.strategy)}</b>, alignment ${M.alignment} B.</div>`;
  box.innerHTML = h;
  for (const dev of Object.keys(M.arenas)) box.appendChild(memoryChart(M, dev));
  const pre = document.createElement("pre");
  pre.textContent = M.summary.join("\n");
  box.appendChild(pre);
}
function memoryChart(M, dev) {
  const wrap = document.createElement("div"), rows = M.tensors.filter((t) => t[6] === dev);
  const arena = M.arenas[dev], lower = M.lowerBounds[dev] || 0;
  wrap.innerHTML = `<div class="stats"><div class="stat"><b>${fmtBytes(arena)}</b><span>arena (${esc(dev)})</span></div>` +
    `<div class="stat"><b>${fmtBytes(lower)}</b><span>lower bound (most bytes live at once)</span></div>` +
    `<div class="stat"><b>${fmtBytes(M.noReuse)}</b><span>without reuse</span></div><div class="stat"><b>${rows.length}</b><span>planned tensors</span></div></div>`;
  const steps = Math.max(1, ...rows.map((t) => t[5] + 1));
  const W = Math.max(640, $("views").clientWidth - 60), H = 360, L = 70, B = 30, T = 14, Rr = 12;
  const top = Math.max(arena, 1) * 1.08, sx = (W - L - Rr) / steps, sy = (H - B - T) / top;
  const svg = el("svg", {width: W, height: H, id: "memchart-" + dev});
  for (let i = 0; i <= 4; i++) {
    const v = top * i / 4, y = H - B - v * sy;
    el("line", {x1: L, x2: W - Rr, y1: y, y2: y, stroke: "#f1f5f9"}, svg);
    el("text", {x: L - 6, y: y + 4, "text-anchor": "end"}, svg).textContent = fmtBytes(Math.round(v));
  }
  const tickEvery = Math.max(1, Math.ceil(steps / 12));
  for (let s = 0; s <= steps; s += tickEvery) el("text", {x: L + s * sx, y: H - B + 16, "text-anchor": "middle"}, svg).textContent = s;
  el("text", {x: W - Rr, y: H - 4, "text-anchor": "end"}, svg).textContent = "step";
  rows.forEach((t, k) => {
    const [name, off, size, nbytes, first, last] = t;
    const hue = (k * 47) % 360;
    const r = el("rect", {class: "slot", x: L + first * sx, y: H - B - (off + size) * sy, width: Math.max(1, (last - first + 1) * sx), height: Math.max(1, size * sy), fill: `hsl(${hue} 65% 62%)`}, svg);
    el("title", {}, r).textContent = `${name}: ${fmtBytes(nbytes)} at offset ${fmtBytes(off)}, steps ${first}–${last}`;
  });
  const live = new Array(steps).fill(0);  // bytes live per step: its peak is the lower bound
  rows.forEach((t) => { for (let s = t[4]; s <= t[5]; s++) live[s] += t[2]; });
  let d = "";
  live.forEach((v, s) => { d += `${s ? "L" : "M"}${L + s * sx},${H - B - v * sy}L${L + (s + 1) * sx},${H - B - v * sy}`; });
  el("path", {d, fill: "none", stroke: "#334155", "stroke-width": 1.2, "stroke-dasharray": "2 2"}, svg);
  const line = (v, color, text, dash, x, anchor, dy) => {
    const y = H - B - v * sy;
    el("line", {x1: L, x2: W - Rr, y1: y, y2: y, stroke: color, "stroke-width": 1.6, "stroke-dasharray": dash}, svg);
    el("text", {x, y: y + dy, "text-anchor": anchor, style: `fill:${color};font-weight:600`}, svg).textContent = text;
  };
  line(arena, "#dc2626", "arena " + fmtBytes(arena), "", W - Rr - 4, "end", -5);
  line(lower, "#16a34a", "lower bound " + fmtBytes(lower), "6 4", L + 6, "start", 14);
  el("line", {x1: L, x2: L, y1: T, y2: H - B, stroke: "#94a3b8"}, svg);
  el("line", {x1: L, x2: W - Rr, y1: H - B, y2: H - B, stroke: "#94a3b8"}, svg);
  wrap.appendChild(svg);
  const note = document.createElement("div");
  note.className = "sub";
  note.textContent = "Dotted: bytes live at each step (its peak is the lower bound). Hover a bar for its tensor.";
  wrap.appendChild(note);
  return wrap;
}

// ---------- code ----------
function code() {
  const s = D.stages[st.stage], pre = $("code");
  const added = new Set(s.added.map((i) => rec(s.nodes[i])[R.name]));
  pre.innerHTML = D.code[s.code].split("\n").map((line) => {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*) = /.exec(line);
    const cls = m && added.has(m[1]) ? " add" : "";
    return `<span class="ln${cls}"${m ? ` data-name="${esc(m[1])}"` : ""}>${esc(line) || " "}</span>`;
  }).join("");
  codeMark();
}
function codeMark() {
  for (const e of document.querySelectorAll("#code .ln.sel")) e.classList.remove("sel");
  if (!st.sel) return;
  const line = document.querySelector(`#code .ln[data-name="${CSS.escape(st.sel)}"]`);
  if (line) { line.classList.add("sel"); if (st.tab === "code") line.scrollIntoView({block: "center"}); }
}

// ---------- wiring ----------
function setTab(t) {
  st.tab = t;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.tab === t);
  for (const v of document.querySelectorAll(".view")) v.classList.toggle("on", v.id === "view-" + t);
  if (t === "memory") memory();
  if (t === "code") code();
  if (t === "graph") {
    minimapBase();
    if (pending) { const p = pending; pending = null; p(); } else applyTransform();
  }
  writeHash();
}
function setStage(k, focus) {
  const keep = view ? {tx: st.tx, ty: st.ty, k: st.k, same: D.stages[k].layout === view.stage.layout} : null;
  st.stage = k;
  render(focus || st.sel, keep);
}
function render(focus, keep) {
  draw();
  stageList();
  passTable();
  legend();
  if (keep && keep.same) applyTransform(); else fit(false);
  const name = focus && view.byName.has(focus) ? focus : null;
  select(name, !!name);
  if (st.tab === "code") code();
  document.body.dataset.ready = "1";
}
function controls() {
  for (const b of document.querySelectorAll("#tabs button")) b.onclick = () => setTab(b.dataset.tab);
  for (const b of document.querySelectorAll("#color-mode button")) b.onclick = () => {
    st.mode = b.dataset.mode; modeButtons(); render(st.sel, {same: true}); writeHash();
  };
  $("show-changes").onchange = (e) => { st.changes = e.target.checked; render(st.sel, {same: true}); writeHash(); };
  const q = $("search");
  q.addEventListener("keydown", (e) => { if (e.key === "Enter") search(q.value.trim(), st.found.length > 0); if (e.key === "Escape") { q.value = ""; search(""); q.blur(); } });
  q.addEventListener("input", () => { st.found = []; });
  document.addEventListener("keydown", (e) => {
    if (e.target === q) return;
    if (e.key === "/") { e.preventDefault(); q.focus(); q.select(); }
    else if (e.key === "f" || e.key === "F") fit(true);
    else if (e.key === "+" || e.key === "=") $("zoom-in").click();
    else if (e.key === "-") $("zoom-out").click();
    else if (e.key === "ArrowDown" || e.key === "j") { if (st.stage + 1 < D.stages.length) setStage(st.stage + 1); }
    else if (e.key === "ArrowUp" || e.key === "k") { if (st.stage > 0) setStage(st.stage - 1); }
  });
  window.addEventListener("hashchange", () => {
    const before = st.stage;
    readHash(); modeButtons(); $("show-changes").checked = st.changes;
    const tab = st.tab;
    setTab(tab);  // first: a hidden graph cannot be fitted to its box
    if (before !== st.stage) setStage(st.stage, st.sel); else render(st.sel, {same: true});
    if (tab !== "graph") setTab(tab);
  });
}
function modeButtons() {
  for (const b of document.querySelectorAll("#color-mode button")) b.classList.toggle("on", b.dataset.mode === st.mode);
}

window.addEventListener("error", (e) => { document.body.dataset.error = String(e.message || e); });
readHash();
header();
artifacts();
controls();
panZoom();
minimapNav();
modeButtons();
$("show-changes").checked = st.changes;
render(st.sel, null);
setTab(st.tab);
window.fxcReport = {data: D, state: st, setStage, select, search, fit};
})();
