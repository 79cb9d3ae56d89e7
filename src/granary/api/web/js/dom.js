// DOM helpers: elements from tag/attrs/children (text is always text, never HTML), tables, paging.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== undefined && c !== null) el.append(c instanceof Node ? c : String(c));
  return el;
}

export const when = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "");
export const sid = (id) => (id ? id.slice(0, 12) : "");
export const badge = (s) => h("span", { class: `state ${s}` }, s);

export function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

// columns: [[header, row => cell, "num"?], ...]
export function table(columns, rows, empty = "Nothing here yet.") {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map(([name, , cls]) => h("th", { class: cls, scope: "col" }, name)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, columns.map(([, f, cls]) => h("td", { class: cls }, f(r)))))));
}

// A paged table: load(cursor) -> {items, next_cursor}; a "More" button appends the next page.
export async function pagedTable(columns, load, empty) {
  const box = h("div", { class: "panel" });
  let cursor = null, rows = [];
  const more = h("button", { class: "more", type: "button" }, "More");
  const render = () => {
    box.replaceChildren(table(columns, rows, empty));
    if (cursor) box.append(more);
  };
  more.addEventListener("click", async () => {
    more.disabled = true;
    const page = await load(cursor);
    rows = rows.concat(page.items); cursor = page.next_cursor; render();
    more.disabled = false;
    box.querySelector("tbody tr:last-child")?.scrollIntoView({ block: "nearest" });
  });
  const first = await load(null);
  rows = first.items; cursor = first.next_cursor; render();
  return box;
}

export const kv = (pairs) => h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
