// The model registry's pages: the list of models, and a model with its versions, aliases, evaluations (and a
// chart of an evaluation metric across versions), deployments, data policy and trail.
import { enc, get } from "./api.js";
import { line, short } from "./charts.js";
import { badge, bytes, h, kv, pagedTable, table, when } from "./dom.js";

const modelLink = (name) => h("a", { href: `#/models/${enc(name)}` }, name);
const dsLink = (name) => h("a", { href: `#/datasets/${enc(name)}` }, name);
const card = (k, v) => h("div", { class: "card" }, h("div", { class: "v" }, v), h("div", { class: "k" }, k));
const aliasList = (aliases) => Object.entries(aliases).map(([a, v]) => `${a} → v${v}`).join(", ") || "—";
const METRICS = ["perplexity", "accuracy", "loss"];

export async function models() {
  const cols = [["Model", (m) => modelLink(m.name)], ["Versions", (m) => m.versions, "num"],
    ["Newest", (m) => `v${m.latest} (${m.latest_method})`], ["Aliases", (m) => aliasList(m.aliases)],
    ["Updated", (m) => when(m.updated_at)]];
  return [h("h1", {}, "Models"), await pagedTable(cols, (cursor) => get("/models", { cursor, limit: 50 }),
    "No models yet: register one with `granary model register CKPT --name NAME`.")];
}

// One series per held-out data version: the metric of each evaluated version, by version number (where a version
// was evaluated more than once on the same data, e.g. a subset while compressing, the one over the most tokens).
function metricChart(evaluations, metric) {
  const best = new Map();
  for (const e of evaluations) {
    const key = `${e.data}/${e.version}`;
    if (!best.has(key) || best.get(key).tokens < e.tokens) best.set(key, e);
  }
  const byData = new Map();
  for (const e of best.values()) {
    if (!byData.has(e.data)) byData.set(e.data, []);
    byData.get(e.data).push([e.version, e[metric]]);
  }
  const series = [...byData.entries()].map(([data, points], i) => ({
    name: `on ${data.slice(0, 12)}`, cls: i ? "alt" : "", points: points.sort((a, b) => a[0] - b[0]) }));
  const title = `${metric[0].toUpperCase()}${metric.slice(1)} across versions`;
  return line(series, { title, xLabel: "version", width: 760, height: 220 });
}

export async function model(name, params) {
  const [d, trail] = await Promise.all([get(`/models/${enc(name)}`),
    get(`/models/${enc(name)}/events`, { limit: 200 })]);
  const metric = METRICS.includes(params?.get("metric")) ? params.get("metric") : "perplexity";
  const alias = (a) => d.aliases.find((x) => x.alias === a);
  const prod = alias("production");
  const live = d.deployments.filter((x) => ["serving", "canary", "starting"].includes(x.state));
  const p = d.policy;
  const picker = h("p", {}, "Metric: ", METRICS.map((m) => (m === metric ? h("strong", {}, m, " ")
    : h("span", {}, h("a", { href: `#/models/${enc(name)}?metric=${m}` }, m), " "))));
  return [h("h1", {}, `Model ${d.name}`),
    h("div", { class: "cards" }, card("versions", d.versions.length), card("newest", `v${d.latest}`),
      card("production", prod ? `v${prod.version}` : "—"), card("evaluations", d.evaluations.length),
      card("serving deployments", live.length)),
    h("div", { class: "panel" }, d.evaluations.length ? metricChart(d.evaluations, metric)
      : h("p", { class: "empty" }, `No evaluations yet: run \`granary eval ${d.name} --data HELDOUT\`.`), picker),
    h("h2", {}, "Versions"),
    h("div", { class: "panel" }, table([["Version", (v) => `v${v.version}`, "num"], ["Method", (v) => v.method],
      ["Made from", (v) => (v.parent ? `v${v.parent}` : "checkpoint")],
      ["Size", (v) => (v.size_bytes ? bytes(v.size_bytes) : "—"), "num"],
      ["Aliases", (v) => v.aliases.join(", ") || "—"], ["By", (v) => v.created_by], ["Registered", (v) => when(v.created_at)]],
    d.versions)),
    h("h2", {}, "Aliases"),
    h("div", { class: "panel" }, table([["Alias", (a) => a.alias], ["Version", (a) => `v${a.version}`, "num"],
      ["Moved", (a) => when(a.moved_at)]], d.aliases, `No aliases: \`granary model alias ${d.name}@N staging\`.`)),
    h("h2", {}, `Data and policy (v${d.lineage.version})`),
    h("div", { class: "panel" }, kv([
      ["checkpoint", d.lineage.checkpoint ? `${d.lineage.checkpoint.dataset} step ${d.lineage.checkpoint.step ?? "—"}` : "—"],
      ["data sets on the lineage", d.lineage.datasets.length ? d.lineage.datasets.flatMap((n, i) => [i ? ", " : "", dsLink(n)]) : "—"],
      ["licenses", p.licenses.join(", ") || "none recorded"],
      ["allowed purposes", p.purposes === null ? "unrestricted" : p.purposes.join(", ")],
      ["restriction tags", p.tags.join(", ") || "—"],
      ["production", p.production_allowed ? badge("allowed") : badge("needs-override")]])),
    h("h2", {}, "Evaluations"),
    h("div", { class: "panel" }, table([["Version", (e) => `v${e.version}`, "num"], ["Data", (e) => h("code", {}, e.data.slice(0, 12))],
      ["Perplexity", (e) => e.perplexity.toFixed(4), "num"], ["Accuracy", (e) => e.accuracy.toFixed(4), "num"],
      ["Loss", (e) => e.loss.toFixed(4), "num"], ["Samples", (e) => e.samples ?? "—", "num"], ["Tokens", (e) => short(e.tokens), "num"],
      ["Shards", (e) => e.shards, "num"]],
    d.evaluations, "No evaluations yet.")),
    h("h2", {}, "Deployments"),
    h("div", { class: "panel" }, table([["Version", (x) => `v${x.version}`, "num"], ["Served as", (x) => x.served_as],
      ["Role", (x) => x.role], ["State", (x) => badge(x.state)], ["Replicas", (x) => x.replicas, "num"],
      ["Weight", (x) => x.weight, "num"], ["Updated", (x) => when(x.updated_at)]], d.deployments,
    `Not deployed: \`granary deploy ${d.name}@production\`.`)),
    h("h2", {}, "Trail"),
    h("div", { class: "panel" }, table([["When", (e) => h("span", { class: "nowrap" }, when(e.at))], ["Action", (e) => (e.override ? h("span", {},
      e.action, " ", badge("override")) : e.action)], ["Version", (e) => (e.version ? `v${e.version}` : "—"), "num"],
    ["By", (e) => e.actor], ["Details", (e) => h("code", {}, JSON.stringify(e.details).slice(0, 90))]],
    trail.items.slice().reverse(), "Nothing recorded."))];
}
