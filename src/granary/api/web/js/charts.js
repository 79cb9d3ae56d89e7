// Small SVG charts, no dependencies: bars, histograms, a timeline and a layered graph.
const NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, children = []) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c);
  return el;
}

function text(x, y, s, attrs = {}) { const t = svg("text", { x, y, ...attrs }); t.textContent = s; return t; }

export function short(n) {
  if (n >= 1e12) return (n / 1e12).toFixed(1) + "T";
  if (n >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return String(Math.round(n * 100) / 100);
}

// Horizontal bars: items = [[label, value], ...]
export function bars(items, { title = "", width = 520, color = "bar" } = {}) {
  const row = 20, left = 150, h = items.length * row + 28;
  const max = Math.max(1, ...items.map((d) => d[1]));
  const root = svg("svg", { width, height: h, role: "img", "aria-label": title, viewBox: `0 0 ${width} ${h}` });
  root.append(svg("title", {}, [title]));
  root.append(text(0, 12, title, { "font-weight": 600 }));
  items.forEach(([label, value], i) => {
    const y = 22 + i * row, w = ((width - left - 60) * value) / max;
    root.append(text(left - 6, y + 12, String(label).slice(0, 24), { "text-anchor": "end" }));
    root.append(svg("rect", { class: color, x: left, y: y + 2, width: Math.max(1, w), height: row - 6 }));
    root.append(text(left + w + 4, y + 12, short(value)));
  });
  return root;
}

// Vertical columns over a sequence (versions per day, histogram bins): items = [[label, value], ...]
export function columns(items, { title = "", width = 520, height = 170, every = 5 } = {}) {
  const bottom = 36, top = 20, n = Math.max(1, items.length), bw = (width - 40) / n;
  const max = Math.max(1, ...items.map((d) => d[1]));
  const root = svg("svg", { width, height, role: "img", "aria-label": title, viewBox: `0 0 ${width} ${height}` });
  root.append(svg("title", {}, [title]));
  root.append(text(0, 12, title, { "font-weight": 600 }));
  root.append(svg("line", { class: "axis", x1: 30, x2: width, y1: height - bottom, y2: height - bottom }));
  root.append(text(26, top + 8, short(max), { "text-anchor": "end" }));
  items.forEach(([label, value], i) => {
    const hgt = ((height - bottom - top) * value) / max, x = 32 + i * bw;
    const r = svg("rect", { class: "bar", x, y: height - bottom - hgt, width: Math.max(1, bw - 2), height: hgt });
    r.append(svg("title", {}, [`${label}: ${value}`]));
    root.append(r);
    if (i % every === 0) root.append(text(x, height - bottom + 14, String(label)));
  });
  return root;
}

// Events on a time axis: events = [{at, label}]
export function timeline(events, { title = "Timeline", width = 760 } = {}) {
  const h = 30 + events.length * 18;
  const root = svg("svg", { width, height: h, role: "img", "aria-label": title, viewBox: `0 0 ${width} ${h}` });
  if (!events.length) return root;
  const t0 = events[0].at, t1 = Math.max(t0 + 1, events[events.length - 1].at);
  const x = (t) => 170 + ((width - 190) * (t - t0)) / (t1 - t0);
  root.append(svg("line", { class: "axis", x1: 170, x2: width - 20, y1: 14, y2: 14 }));
  events.forEach((e, i) => {
    const y = 30 + i * 18;
    root.append(text(164, y + 4, e.label.slice(0, 26), { "text-anchor": "end" }));
    root.append(svg("circle", { cx: x(e.at), cy: y, r: 5, fill: "#4c78a8" }));
    root.append(svg("line", { class: "axis", x1: x(e.at), x2: x(e.at), y1: 14, y2: y }));
  });
  return root;
}

// A layered graph: sources on the left, the root on the right. nodes: [{id,label,kind}], edges: [{source,target}]
export function graph(nodes, edges, { root, href = () => null, width = 980 } = {}) {
  const depth = new Map([[root, 0]]);
  const incoming = new Map();
  for (const e of edges) { if (!incoming.has(e.target)) incoming.set(e.target, []); incoming.get(e.target).push(e.source); }
  const queue = [root];
  while (queue.length) {
    const id = queue.shift();
    for (const src of incoming.get(id) || []) {
      if (!depth.has(src)) { depth.set(src, depth.get(id) + 1); queue.push(src); }
    }
  }
  const maxDepth = Math.max(0, ...depth.values());
  const layers = [];
  for (const n of nodes) {
    const d = depth.get(n.id) ?? maxDepth;
    (layers[d] = layers[d] || []).push(n);
  }
  const colW = Math.max(170, Math.min(230, width / (maxDepth + 1))), rowH = 56, nodeW = colW - 30;
  const rows = Math.max(1, ...layers.map((l) => (l ? l.length : 0)));
  const w = (maxDepth + 1) * colW + 20, h = rows * rowH + 20;
  const pos = new Map();
  layers.forEach((layer, d) => (layer || []).forEach((n, i) => pos.set(n.id, [w - (d + 1) * colW, 10 + i * rowH])));
  const root_ = svg("svg", { width: w, height: h, role: "img", "aria-label": "lineage graph", viewBox: `0 0 ${w} ${h}` });
  for (const e of edges) {
    const a = pos.get(e.source), b = pos.get(e.target);
    if (!a || !b) continue;
    const x1 = a[0] + nodeW, y1 = a[1] + 20, x2 = b[0], y2 = b[1] + 20, mx = (x1 + x2) / 2;
    const p = svg("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` });
    p.append(svg("title", {}, [e.relation || ""]));
    root_.append(p);
  }
  for (const n of nodes) {
    const [x, y] = pos.get(n.id);
    const g = svg("g", { class: `node ${n.id === root ? "root" : ""} ${n.kind === "file" ? "file" : ""}`, "data-id": n.id });
    g.append(svg("rect", { x, y, width: nodeW, height: 40, rx: 5 }));
    g.append(text(x + 8, y + 16, n.label.slice(0, 28), { "font-weight": 600 }));
    g.append(text(x + 8, y + 31, (n.message || n.kind || "").slice(0, 30), { class: "muted" }));
    const link = href(n);
    if (link) { const a = svg("a", { href: link, tabindex: 0 }); a.append(g); root_.append(a); } else root_.append(g);
  }
  return root_;
}

// A line over steps: series = [{name, points: [[x, y], ...], cls}] on shared axes (loss curves).
export function line(series, { title = "", width = 760, height = 240, xLabel = "step" } = {}) {
  const left = 52, right = 16, top = 22, bottom = 34;
  const all = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  const root = svg("svg", { width, height, role: "img", "aria-label": title, viewBox: `0 0 ${width} ${height}` });
  root.append(svg("title", {}, [title]));
  root.append(text(0, 12, title, { "font-weight": 600 }));
  if (!all.length) return root;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(x0 + 1, ...xs);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-12) { y0 -= 1; y1 += 1; }
  const X = (x) => left + ((width - left - right) * (x - x0)) / (x1 - x0);
  const Y = (y) => height - bottom - ((height - bottom - top) * (y - y0)) / (y1 - y0);
  root.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
  root.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: height - bottom }));
  root.append(text(left - 4, Y(y1) + 4, short(y1), { "text-anchor": "end" }));
  root.append(text(left - 4, Y(y0) + 4, short(y0), { "text-anchor": "end" }));
  root.append(text(X(x0), height - bottom + 14, String(x0)));
  root.append(text(X(x1), height - bottom + 14, String(x1), { "text-anchor": "end" }));
  root.append(text((left + width) / 2, height - 4, xLabel, { "text-anchor": "middle", class: "muted" }));
  series.forEach((s, i) => {
    const pts = s.points.filter(([, y]) => Number.isFinite(y));
    if (!pts.length) return;
    const d = pts.map(([x, y], j) => `${j ? "L" : "M"}${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" ");
    const path = svg("path", { class: `curve ${s.cls || ""}`, d, "data-series": s.name });
    path.append(svg("title", {}, [`${s.name}: ${pts.length} points, last ${short(pts[pts.length - 1][1])}`]));
    root.append(path);
    root.append(text(width - right, top + 12 * i, s.name, { "text-anchor": "end", class: `legend ${s.cls || ""}` }));
  });
  return root;
}
