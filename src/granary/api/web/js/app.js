// The dashboard's router: #/path -> a page; token box; errors shown in place, never a blank page.
import { ApiError, get, setToken, token } from "./api.js";
import { h } from "./dom.js";
import * as modelPages from "./models.js";
import * as pages from "./pages.js";

const routes = [
  [/^\/$/, () => pages.overview()],
  [/^\/datasets$/, () => pages.datasets()],
  [/^\/datasets\/(.+)$/, (m) => pages.dataset(decodeURIComponent(m[1]))],
  [/^\/versions\/(.+)$/, (m) => pages.version(decodeURIComponent(m[1]))],
  [/^\/lineage\/(.+)$/, (m) => pages.lineage(decodeURIComponent(m[1]))],
  [/^\/jobs$/, (_m, q) => pages.jobs(q)],
  [/^\/jobs\/(.+)$/, (m) => pages.job(decodeURIComponent(m[1]))],
  [/^\/runs$/, () => pages.runs()],
  [/^\/runs\/(.+)$/, (m) => pages.run(decodeURIComponent(m[1]))],
  [/^\/models$/, () => modelPages.models()],
  [/^\/models\/(.+)$/, (m, q) => modelPages.model(decodeURIComponent(m[1]), q)],
  [/^\/nodes$/, () => pages.nodes()],
  [/^\/audit$/, (_m, q) => pages.audit(q)],
  [/^\/gateway$/, () => pages.gateway()],
];

function problem(e) {
  if (!(e instanceof ApiError)) return h("div", { class: "error", role: "alert" }, `Something went wrong: ${e.message}`);
  const msg = e.status === 401 ? "This server needs a token: paste one from `granary token issue` above." : e.message;
  return h("div", { class: "error", role: "alert" }, h("div", {}, msg), e.hint ? h("div", { class: "hint" }, e.hint) : "");
}

async function render() {
  const main = document.getElementById("main");
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("nav a")) {
    const target = a.getAttribute("href").slice(1);
    if (target === "/" ? path === "/" : path.startsWith(target)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const found = routes.find(([re]) => re.test(path));
  const started = performance.now();
  try {
    const nodes = found ? await found[1](path.match(found[0]), params) : [h("h1", {}, "Not found"),
      h("p", {}, h("a", { href: "#/" }, "Back to the overview"))];
    main.replaceChildren(...nodes);
    document.title = `${main.querySelector("h1")?.textContent || "Granary"} · Granary`;
  } catch (e) {
    main.replaceChildren(h("h1", {}, "Granary"), problem(e));
  }
  main.dataset.ready = "1";
  main.dataset.renderMs = String(Math.round(performance.now() - started));
}

async function whoami() {
  const who = document.getElementById("who");
  try {
    const me = await get("/whoami");
    who.textContent = `${me.name} (${me.tenant})`;
  } catch {
    who.textContent = "not signed in";
  }
}

document.getElementById("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("token");
  setToken(input.value.trim());
  input.value = "";
  whoami();
  // the page re-renders as the new principal: until it has, it is not ready (a click on the old page's buttons
  // would act on a page that is about to be replaced)
  document.getElementById("main").dataset.ready = "";
  render();
});
document.getElementById("token").placeholder = token() ? "token set (paste to change)" : "gry_… (tokens mode)";
window.addEventListener("hashchange", () => { document.getElementById("main").dataset.ready = ""; render(); });
whoami();
render();
