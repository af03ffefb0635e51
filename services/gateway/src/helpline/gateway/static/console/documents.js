// Documents: the indexed pages (by brand or source, a page at a time), one page's extracted
// Markdown and lineage, and taking a page out of the index.
import { get, del } from "./api.js";
import { h, when, ago, guarded, brandsSeen } from "./ui.js";

const PAGE = 50;
const filters = document.getElementById("document-filters");
const tbody = document.querySelector("#document-list tbody");
const empty = document.getElementById("document-empty");
const more = document.getElementById("document-more");
const detail = document.getElementById("document-detail");
const detailBody = document.getElementById("document-detail-body");
let cursor = null;

function params() {
  const p = new URLSearchParams({ limit: String(PAGE) });
  for (const name of ["brand", "source"]) {
    const value = filters.elements[name].value.trim();
    if (value) p.set(name, value);
  }
  if (cursor) p.set("cursor", cursor);
  return p;
}

function row(doc) {
  return h(
    "tr",
    { "data-document": doc.id },
    h("td", {}, h("a", { href: `#documents/${encodeURIComponent(doc.id)}` }, doc.title || doc.url)),
    h("td", {}, h("a", { href: doc.url, target: "_blank", rel: "noopener noreferrer", class: "meta" }, doc.url)),
    h("td", {}, doc.brand ?? ""),
    h("td", {}, String(doc.chunks)),
    h("td", { title: when(doc.fetched_at) }, ago(doc.fetched_at)),
  );
}

async function load(append) {
  if (!append) cursor = null;
  const page = await guarded(() => get(`/documents?${params()}`));
  if (!page) return;
  brandsSeen(page.items.map((d) => d.brand));
  if (append) tbody.append(...page.items.map(row));
  else tbody.replaceChildren(...page.items.map(row));
  cursor = page.next_cursor;
  more.hidden = !cursor;
  empty.hidden = tbody.children.length > 0;
}

async function sourceChoices() {
  const select = filters.elements.source;
  const list = await guarded(() => get("/sources"));
  const chosen = select.value;
  select.replaceChildren(
    h("option", { value: "" }, "any"),
    ...(list ? list.items : []).map((s) => h("option", { value: s.id }, `${s.url} (${s.brand})`)),
  );
  select.value = chosen;
}

function lineage(steps) {
  if (!steps.length) return h("p", { class: "hint" }, "No lineage: indexed before it was recorded.");
  const admin = document.body.dataset.scopes.includes("admin");
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { id: "document-lineage" },
      h("thead", {}, h("tr", {}, ["Step", "At", "Took", "Task", "Trace"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        steps.map((s) =>
          h(
            "tr",
            {},
            h("td", {}, s.step),
            h("td", {}, when(s.at)),
            h("td", {}, `${s.duration_ms.toFixed(1)} ms`),
            h("td", {}, h("a", { href: `#tasks/${s.task_id}`, class: "mono" }, s.task_id.slice(0, 12))),
            h("td", {}, s.trace_id && admin ? h("a", { href: `/traces/${s.trace_id}`, target: "_blank", rel: "noopener", class: "mono" }, s.trace_id.slice(0, 12)) : s.trace_id ? h("span", { class: "mono" }, s.trace_id.slice(0, 12)) : ""),
          ),
        ),
      ),
    ),
  );
}

async function remove(doc, where) {
  if (!confirm(`Take ${doc.url} out of the index and out of cached answers?`)) return;
  const done = await guarded(() => del(`/documents/${encodeURIComponent(doc.id)}`), where);
  if (done === undefined) return;
  where.classList.remove("error");
  where.textContent = done && done.status === "pending"
    ? "Removal started; follow its task."
    : `Removed (${done?.chunks_removed ?? 0} chunks).`;
  await load(false);
}

async function open(id) {
  detail.hidden = false;
  detailBody.replaceChildren(h("p", { class: "meta" }, "loading…"));
  const doc = await guarded(() => get(`/documents/${encodeURIComponent(id)}`), detailBody);
  if (!doc) return;
  const result = h("p", { class: "result", role: "status" });
  const submit = document.body.dataset.scopes.includes("submit");
  detailBody.replaceChildren(
    h("h4", {}, doc.title || doc.url),
    h(
      "dl",
      {},
      h("dt", {}, "URL"), h("dd", {}, h("a", { href: doc.url, target: "_blank", rel: "noopener noreferrer" }, doc.url)),
      h("dt", {}, "Brand"), h("dd", {}, doc.brand ?? ""),
      h("dt", {}, "Chunks"), h("dd", {}, String(doc.chunks)),
      h("dt", {}, "Fetched"), h("dd", {}, when(doc.fetched_at)),
      h("dt", {}, "Indexed"), h("dd", {}, when(doc.indexed_at)),
      h("dt", {}, "Last modified"), h("dd", {}, doc.last_modified || ""),
    ),
    submit ? h("button", { type: "button", class: "danger", onclick: () => remove(doc, result) }, "Remove from index") : "",
    result,
    h("h4", {}, "Lineage"),
    lineage(doc.lineage || []),
    h("h4", {}, "Extracted text (Markdown)"),
    doc.markdown ? h("pre", { id: "document-markdown", class: "markdown" }, doc.markdown) : h("p", { class: "hint" }, "Not kept for this page."),
  );
  detail.scrollIntoView({ block: "nearest" });
}

filters.addEventListener("change", () => load(false));
filters.addEventListener("submit", (event) => {
  event.preventDefault();
  load(false);
});
more.addEventListener("click", () => load(true));

export async function show(arg) {
  const decoded = arg ? decodeURIComponent(arg) : "";
  await sourceChoices();
  if (decoded.startsWith("source=")) {
    filters.elements.source.value = decoded.slice(7);
    detail.hidden = true;
  } else if (!decoded) detail.hidden = true;
  await load(false);
  if (decoded && !decoded.startsWith("source=")) await open(decoded);
}
