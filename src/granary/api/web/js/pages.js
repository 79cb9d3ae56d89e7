// The dashboard's pages: each returns the nodes of <main> for a route.
import { enc, get, post } from "./api.js";
import { bars, columns, graph, line, short, timeline } from "./charts.js";
import { badge, bytes, h, kv, pagedTable, sid, table, when } from "./dom.js";

const dsLink = (name) => h("a", { href: `#/datasets/${enc(name)}` }, name);
const vLink = (dataset, id) => h("a", { href: `#/versions/${enc(dataset)}@${id.slice(0, 16)}`, class: "mono" }, sid(id));
const jobLink = (id) => h("a", { href: `#/jobs/${enc(id)}`, class: "mono" }, id);
const card = (k, v) => h("div", { class: "card" }, h("div", { class: "v" }, v), h("div", { class: "k" }, k));

export async function overview() {
  const o = await get("/overview");
  const running = o.jobs.running || 0, pending = o.jobs.pending || 0;
  return [
    h("h1", {}, "Overview"),
    h("div", { class: "cards" },
      card("datasets", o.datasets), card("versions", o.versions), card("storage (live versions)", bytes(o.storage_bytes)),
      card("jobs running", running), card("jobs waiting", pending),
      card("GPUs in use", `${o.gpus_used} / ${o.gpus_total}`), card("nodes up", o.nodes.up || 0),
      card("audit records", short(o.audit_records)),
      card("open alerts", o.alerts.length)),
    h("div", { class: "grid2" },
      h("div", { class: "panel" }, columns(o.versions_per_day.map((d) => [d.day.slice(5), d.count]),
        { title: "Versions committed per day (30 days)" })),
      h("div", { class: "panel" }, bars(Object.entries(o.jobs).sort(), { title: "Jobs by state" }))),
    h("h2", {}, "Open alerts"),
    o.alerts.length ? h("div", { class: "panel" }, table([["Severity", (a) => badge(a.severity)],
      ["Alert", (a) => a.summary], ["Where", (a) => Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(" ")],
      ["Since", (a) => when(a.starts_at)], ["Action", (a) => a.action || "—"],
      ["", (a) => (a.silenced ? "silenced" : "")]], o.alerts))
      : h("p", { class: "empty" }, "No open alerts: the monitor's detectors found nothing wrong."),
  ];
}

export async function datasets() {
  const cols = [["Name", (d) => dsLink(d.name)], ["Kind", (d) => d.kind], ["Description", (d) => d.description],
    ["Head", (d) => (d.head ? vLink(d.name, d.head) : h("span", { class: "muted" }, "no commit"))],
    ["Created", (d) => when(d.created_at)]];
  return [h("h1", {}, "Datasets"), await pagedTable(cols, (cursor) => get("/datasets", { cursor, limit: 50 }),
    "No datasets yet: create one with `granary create NAME` and `granary ingest`.")];
}

export async function dataset(name) {
  const d = await get(`/datasets/${enc(name)}`);
  const vcols = [["Version", (v) => vLink(v.dataset, v.id)], ["Message", (v) => v.message],
    ["Rows", (v) => v.num_rows.toLocaleString(), "num"], ["Size", (v) => bytes(v.num_bytes), "num"],
    ["Author", (v) => v.author], ["Created", (v) => when(v.created_at)]];
  const out = [h("h1", {}, `Dataset ${d.name}`),
    h("div", { class: "panel" }, kv([["kind", d.kind], ["description", d.description || "—"],
      ["default branch", d.default_branch], ["versions", d.num_versions],
      ["tenant", d.policy.tenant], ["tags", (d.policy.tags || []).join(", ") || "—"],
      ["licenses", (d.policy.licenses || []).join(", ") || "—"]])),
    h("h2", {}, "Branches and tags"),
    h("div", { class: "panel" }, table([["Kind", (r) => r.kind], ["Name", (r) => r.name],
      ["Version", (r) => (r.version_id ? vLink(r.dataset, r.version_id) : "—")], ["Updated", (r) => when(r.updated_at)]],
    d.refs))];
  if (d.head) {
    const g = await get(`/lineage/${enc(d.name)}@${d.head.slice(0, 16)}`, { max_nodes: 60 });
    out.push(h("h2", {}, "Version graph and lineage"), h("div", { class: "panel" }, lineageGraph(g)),
      h("p", {}, h("a", { href: `#/lineage/${enc(d.name)}@${d.head.slice(0, 16)}` }, "Open in the lineage explorer")));
  }
  out.push(h("h2", {}, "Versions"), await pagedTable(vcols,
    (cursor) => get(`/datasets/${enc(name)}/versions`, { cursor, limit: 25 }), "No versions yet."));
  return out;
}

function lineageGraph(g) {
  return graph(g.nodes, g.edges, { root: g.root,
    href: (n) => (n.kind === "file" ? null : `#/versions/${enc(n.dataset)}@${n.id.slice(0, 16)}`) });
}

export async function version(ref) {
  const v = await get(`/versions/${enc(ref)}`);
  const out = [h("h1", {}, `${v.dataset} @ ${sid(v.id)}`),
    h("div", { class: "panel" }, kv([["dataset", dsLink(v.dataset)], ["version", h("code", {}, v.id)],
      ["message", v.message], ["author", v.author], ["created", when(v.created_at)],
      ["rows", v.num_rows.toLocaleString()], ["size", bytes(v.num_bytes)], ["shards", v.num_shards],
      ["tokens", v.num_tokens ?? "—"], ["produced by", v.lineage.command || "—"],
      ["side tables", v.side_tables.join(", ") || "—"],
      ["lineage", h("a", { href: `#/lineage/${enc(v.dataset)}@${v.id.slice(0, 16)}` }, "explore")]]))];
  if (v.schema) {
    out.push(h("h2", {}, "Schema"), h("div", { class: "panel" },
      table([["Column", (f) => h("code", {}, f.name)], ["Type", (f) => f.type]], v.schema)));
  }
  if (v.kind === "tokens") {
    const box = h("div", { class: "panel" });
    const btn = h("button", { type: "button", onclick: async () => {
      btn.disabled = true;
      const p = await get(`/versions/${enc(ref)}/samples`, { seq_len: 32, count: 5 });
      box.replaceChildren(h("p", { class: "muted" }, `${p.samples_per_epoch.toLocaleString()} samples of 32 tokens per epoch`),
        table([["Tokens", (r) => h("code", {}, r.tokens.join(" "))]], p.samples));
    } }, "Show what the loader yields (an audited read)");
    box.append(btn);
    out.push(h("h2", {}, "Loader preview"), box);
  }
  if (v.kind === "documents") {
    const box = h("div", { class: "panel" });
    const btn = h("button", { type: "button", onclick: async () => {
      btn.disabled = true;
      const p = await get(`/versions/${enc(ref)}/preview`, { limit: 10 });
      box.replaceChildren(table(p.columns.map((c) => [c, (r) => String(r[c] ?? "").slice(0, 200)]), p.rows));
    } }, "Show the first rows (an audited read)");
    box.append(btn);
    const rep = h("div", {}, h("button", { type: "button", onclick: async (ev) => {
      ev.target.disabled = true; ev.target.textContent = "Computing the report…";
      rep.replaceChildren(...report(await get(`/versions/${enc(ref)}/report`)));
    } }, "Quality report"));
    out.push(h("h2", {}, "Rows"), box, h("h2", {}, "Quality"), rep);
  }
  return out;
}

function report(r) {
  const hist = (dist, title) => (dist.count ? columns(dist.histogram.counts.map((c, i) =>
    [`${short(dist.histogram.edges[i])}`, c]), { title, every: 2 }) : h("p", { class: "empty" }, "no documents"));
  const langs = Object.entries(r.languages.counts || {}).slice(0, 12);
  const pii = Object.entries(r.pii.counts || {});
  return [
    h("div", { class: "cards" }, card("documents", r.documents.toLocaleString()), card("text", bytes(r.text_bytes)),
      card("exact duplicates", `${(100 * (r.duplicates.exact_rate || 0)).toFixed(1)}%`),
      card("near duplicates", `${(100 * (r.duplicates.near_rate || 0)).toFixed(1)}%`),
      card("quarantined", r.quarantine.count)),
    h("div", { class: "grid2" },
      h("div", { class: "panel" }, hist(r.lengths.chars, "Document length (characters)")),
      h("div", { class: "panel" }, hist(r.lengths.words, "Document length (words)")),
      h("div", { class: "panel" }, langs.length ? bars(langs, { title: `Languages (${r.languages.method})` })
        : h("p", { class: "empty" }, "No language information.")),
      h("div", { class: "panel" }, pii.length ? bars(pii, { title: `PII found (${r.pii.method})`, color: "bar alt" })
        : h("p", { class: "empty" }, "No PII found."))),
    h("h2", {}, "What each filter dropped"),
    h("div", { class: "panel" }, r.drops.length ? bars(r.drops.map((d) => [`${d.step}: ${d.reason}`, d.count]),
      { title: "Dropped documents", width: 760 }) : h("p", { class: "empty" }, "Nothing was dropped.")),
    r.pipeline.length ? h("div", { class: "panel" }, table([["Step", (s) => s.step],
      ["Docs in", (s) => s.docs_in.toLocaleString(), "num"], ["Docs out", (s) => s.docs_out.toLocaleString(), "num"],
      ["Seconds", (s) => s.seconds, "num"]], r.pipeline)) : "",
  ];
}

export async function lineage(ref) {
  const g = await get(`/lineage/${enc(ref)}`);
  const root = g.nodes.find((n) => n.id === g.root);
  return [h("h1", {}, `Lineage of ${root.label}`),
    h("p", { class: "muted" }, "From raw files (left) through curated and tokenized versions to this one (right). " +
      "Select a version to open it."),
    h("div", { class: "panel" }, lineageGraph(g)), g.truncated ? h("p", { class: "muted" }, "Truncated.") : "",
    h("h2", {}, "Versions in this graph"),
    h("div", { class: "panel" }, table([["Version", (n) => (n.kind === "file" ? n.message : vLink(n.dataset, n.id))],
      ["Kind", (n) => n.kind], ["Rows", (n) => (n.num_rows ?? "").toLocaleString(), "num"],
      ["Message", (n) => n.message]], g.nodes))];
}

export async function jobs(params) {
  const state = params.get("state") || "";
  const select = h("select", { id: "state", "aria-label": "State", onchange: (e) => {
    location.hash = e.target.value ? `#/jobs?state=${e.target.value}` : "#/jobs";
  } }, ["", "pending", "running", "succeeded", "failed", "cancelled"].map((s) =>
    h("option", { value: s, selected: s === state }, s || "all states")));
  const queues = await get("/queues");
  const cols = [["Job", (j) => jobLink(j.id)], ["Name", (j) => j.name], ["Tenant", (j) => j.tenant],
    ["State", (j) => badge(j.state)], ["Why", (j) => j.reason], ["GPUs", (j) => j.gpus, "num"],
    ["Submitted", (j) => when(j.submit_time)]];
  return [h("h1", {}, "Jobs"),
    h("div", { class: "panel" }, table([["Queue (tenant)", (q) => q.tenant], ["Waiting", (q) => q.pending, "num"],
      ["Running", (q) => q.running, "num"], ["GPUs waiting", (q) => q.gpus_pending, "num"],
      ["GPUs running", (q) => q.gpus_running, "num"]], queues, "No job waits or runs.")),
    h("p", {}, h("label", { for: "state" }, "Show "), select),
    await pagedTable(cols, (cursor) => get("/jobs", { cursor, limit: 50, state: state || undefined }),
      "No jobs: submit one with `granary submit`.")];
}

export async function job(id) {
  const j = await get(`/jobs/${enc(id)}`);
  const terminal = ["succeeded", "failed", "cancelled"].includes(j.state);
  const status = h("span", { role: "status" });
  const cancel = h("button", { type: "button", class: "danger", disabled: terminal || j.cancel_requested,
    onclick: async () => {
      cancel.disabled = true;
      try {
        const r = await post(`/jobs/${enc(id)}/cancel`);
        status.textContent = ` ${r.status}`;
      } catch (e) {
        status.replaceChildren(h("span", { class: "error" }, e.message));
        cancel.disabled = false;
      }
    } }, j.cancel_requested ? "Cancel requested" : "Cancel job");
  const logs = await get(`/jobs/${enc(id)}/logs`).catch(() => "");
  return [h("h1", {}, `Job ${j.name} `, badge(j.state)),
    h("p", {}, cancel, status),
    h("div", { class: "panel" }, kv([["id", h("code", {}, j.id)], ["tenant", j.tenant], ["why", j.reason],
      ["GPUs", j.gpus], ["attempt", j.attempt], ["submitted", when(j.submit_time)],
      ["started", when(j.first_start) || "—"], ["finished", when(j.finish_time) || "—"],
      ["restarts (node / job)", `${j.node_restarts} / ${j.job_restarts}`], ["preemptions", j.preemptions]])),
    h("h2", {}, "Timeline"),
    h("div", { class: "panel" }, j.events.length ? timeline(j.events.map((e) => ({ at: e.at,
      label: `${e.from_state} → ${e.to_state}` }))) : h("p", { class: "empty" }, "No events yet: the scheduler has not seen it."),
    j.events.length ? h("ol", { class: "timeline" }, j.events.map((e) =>
      h("li", {}, `${when(e.at)} ${e.from_state} → ${e.to_state}: ${e.reason}`))) : ""),
    h("h2", {}, "Attempts"),
    h("div", { class: "panel" }, table([["Attempt", (a) => a.attempt], ["Replica", (a) => a.replica],
      ["Node", (a) => a.node], ["State", (a) => badge(a.state)], ["Exit", (a) => a.exit_code ?? ""],
      ["Started", (a) => when(a.started_at)], ["Ended", (a) => when(a.ended_at)]], j.attempts, "Not started yet.")),
    h("h2", {}, "Log"), h("pre", { class: "panel" }, logs || "(no log on this server)")];
}

const runLink = (name) => h("a", { href: `#/runs/${enc(name)}` }, name);

export async function runs() {
  const cols = [["Run", (r) => runLink(r.name)], ["Description", (r) => r.description],
    ["Step", (r) => r.step ?? "—", "num"], ["Checkpoints", (r) => r.checkpoints, "num"],
    ["Last checkpoint", (r) => when(r.last_checkpoint_at) || "—"]];
  return [h("h1", {}, "Training runs"), await pagedTable(cols, (cursor) => get("/runs", { cursor, limit: 50 }),
    "No training runs yet: start one with `granary train RECIPE.yaml`.")];
}

export async function run(name) {
  const [r, m] = await Promise.all([get(`/runs/${enc(name)}`), get(`/runs/${enc(name)}/metrics`, { points: 800 })]);
  const pts = (key) => m.points.filter((p) => p[key] !== null && p[key] !== undefined).map((p) => [p.step, p[key]]);
  const evals = pts("eval_loss");
  const data = r.data.versions || [];
  const out = [h("h1", {}, `Run ${r.run} `, badge(r.status)),
    h("div", { class: "cards" }, card("step", r.steps ? `${r.step} / ${r.steps}` : r.step),
      card("checkpoints", r.checkpoints.length), card("restarts", Math.max(0, r.restarts.length - 1)),
      card("world size", r.world_size ?? "—"), card("parallel", r.parallel || "—"),
      card("last loss", r.last_metrics.loss !== undefined ? short(r.last_metrics.loss) : "—")),
    h("div", { class: "panel" }, line([{ name: "loss", points: pts("loss") },
      ...(evals.length ? [{ name: "eval loss", points: evals, cls: "alt" }] : [])],
    { title: `Loss (${m.steps_logged} steps logged)` })),
    h("div", { class: "grid2" },
      h("div", { class: "panel" }, line([{ name: "tokens/s", points: pts("tokens_per_second") }],
        { title: "Tokens per second", width: 520, height: 180 })),
      h("div", { class: "panel" }, line([{ name: "learning rate", points: pts("learning_rate") }],
        { title: "Learning rate", width: 520, height: 180 }))),
    h("h2", {}, "Data"),
    h("div", { class: "panel" }, kv([["trained on", r.data.ref ? h("a", { href: `#/lineage/${enc(r.data.ref)}` },
      r.data.ref) : "—"], ["versions", data.map((v) => (typeof v === "string" ? v : v.ref || v.id || "")).join(", ") || "—"],
    ["purpose", r.lineage.data?.purpose || "—"], ["seed", r.lineage.data?.seed ?? "—"],
    ["samples consumed", (r.lineage.samples_consumed ?? "—").toLocaleString()],
    ["code", h("code", {}, (r.lineage.code || "").slice(0, 16))], ["run folder", h("code", {}, r.run_dir)],
    ["last logged", when(r.last_logged_at) || "—"]])),
    h("h2", {}, "Checkpoints"),
    h("div", { class: "panel" }, table([["Step", (c) => c.step ?? "—", "num"], ["Version", (c) => vLink(name, c.id)],
      ["Size", (c) => bytes(c.num_bytes), "num"], ["State", (c) => badge(c.state)], ["Saved", (c) => when(c.created_at)]],
    r.checkpoints, "No checkpoint yet.")),
    h("h2", {}, "Starts and restarts"),
    h("div", { class: "panel" }, table([["Attempt", (x) => x.attempt ?? "", "num"], ["Cause", (x) => x.cause || ""],
      ["Resumed from step", (x) => x.resumed_from ?? "—", "num"], ["When", (x) => when(x.time)]], r.restarts,
    "No start recorded (the run folder is not on this server)."))];
  if (r.faults.length) {
    out.push(h("h2", {}, "Faults"), h("div", { class: "panel" }, table([["When", (f) => when(f.time)],
      ["Cause", (f) => f.cause || JSON.stringify(f)]], r.faults)));
  }
  return out;
}

export async function nodes() {
  const list = await get("/nodes");
  return [h("h1", {}, "Nodes"),
    list.length ? h("div", { class: "panel" }, bars(list.map((n) => [n.name, n.gpus_used]),
      { title: "GPUs in use per node" })) : "",
    h("div", { class: "panel" }, table([["Node", (n) => n.name], ["Status", (n) => badge(n.drain_requested ? "draining" : n.status)],
      ["Why", (n) => n.reason], ["GPUs", (n) => `${n.gpus_used} / ${n.gpus}`, "num"], ["CPUs", (n) => n.cpus, "num"],
      ["Memory", (n) => bytes(n.memory_bytes), "num"], ["Utilisation", (n) => `${Math.round(100 * n.utilization)}%`, "num"],
      ["Heartbeat", (n) => when(n.last_heartbeat)]], list, "No nodes: start an agent with `granary agent`."))];
}

export async function audit(params) {
  const filters = Object.fromEntries(["principal", "dataset", "action", "outcome"].map((k) => [k, params.get(k) || undefined]));
  const verify = await get("/audit/verify");
  const banner = verify.ok
    ? h("p", { class: "panel", role: "status" }, badge("ok"), ` chain verified: ${verify.records.toLocaleString()} records, ` +
      `${verify.checkpoints} signed checkpoints`)
    : h("p", { class: "error", role: "alert" }, `chain broken at record ${verify.first_bad}: ${verify.reason}`);
  const form = h("form", { class: "panel", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams([...new FormData(e.target)].filter(([, v]) => v));
    location.hash = `#/audit?${q}`;
  } }, ["principal", "dataset", "action", "outcome"].map((k) =>
    h("label", {}, `${k} `, h("input", { name: k, value: filters[k] || "", size: 12 }), " ")),
  h("button", { type: "submit" }, "Filter"));
  const cols = [["#", (r) => r.seq, "num"], ["When", (r) => when(r.at)], ["Principal", (r) => r.principal],
    ["Action", (r) => r.action], ["Dataset", (r) => r.dataset], ["Object", (r) => h("span", { class: "mono" }, r.object)],
    ["Outcome", (r) => badge(r.outcome)]];
  return [h("h1", {}, "Audit log"), banner, form,
    await pagedTable(cols, (cursor) => get("/audit", { cursor, limit: 50, ...filters }), "No audit records match.")];
}

export async function gateway() {
  const eps = await get("/gateway/endpoints");
  return [h("h1", {}, "Gateway"),
    h("div", { class: "panel" }, table([["Model", (e) => e.model], ["Backend", (e) => e.name],
      ["URL", (e) => h("code", {}, e.url)], ["Weight", (e) => e.weight, "num"],
      ["Job", (e) => (e.job_id ? jobLink(e.job_id) : "—")], ["Lease", (e) => badge(e.alive ? "up" : "down")],
      ["Heartbeat", (e) => when(e.heartbeat_at)]], eps,
    "No model endpoints registered: serving jobs register theirs with `granary gateway register`."))];
}
