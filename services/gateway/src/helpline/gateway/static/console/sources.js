// Sources: sites crawled on a schedule — their last run, next due, add and delete.
import { get, post, del } from "./api.js";
import { h, when, ago, guarded, brandsSeen } from "./ui.js";

const form = document.getElementById("source-form");
const tbody = document.querySelector("#source-list tbody");
const empty = document.getElementById("source-empty");
const note = document.getElementById("source-note");
const panel = document.getElementById("sources");
const POLL_MS = 3000;
let timer = null;

export function until(iso) {
  if (!iso) return "";
  const s = (new Date(iso).getTime() - Date.now()) / 1000;
  if (s <= 0) return "due now";
  if (s < 60) return `in ${Math.round(s)} s`;
  if (s < 3600) return `in ${Math.round(s / 60)} min`;
  if (s < 86400 * 2) return `in ${Math.round(s / 3600)} h`;
  return `in ${Math.round(s / 86400)} days`;
}

export function every(seconds) {
  if (seconds % 86400 === 0) return `${seconds / 86400} d`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

function lastCrawl(last) {
  if (!last) return h("span", { class: "meta" }, "not yet");
  const status = last.status || "record expired";
  const pages = [];
  if (last.pages_ok != null) pages.push(`${last.pages_ok} pages`);
  if (last.pages_failed) pages.push(`${last.pages_failed} failed`);
  if (last.chunks_indexed != null) pages.push(`${last.chunks_indexed} chunks`);
  return h(
    "span",
    {},
    h("a", { href: `#tasks/${last.task_id}`, class: `status ${last.status || ""}` }, status),
    pages.length ? ` · ${pages.join(", ")}` : "",
    h("br"),
    h("span", { class: "meta", title: when(last.started_at) }, ago(last.started_at)),
  );
}

async function remove(source) {
  const keep = document.getElementById("source-keep").checked;
  const what = keep ? "its pages stay in the index" : "its pages are taken out of the answers";
  if (!confirm(`Delete the source ${source.url} (${source.brand})? The schedule stops and ${what}.`)) return;
  const query = keep ? "?keep_documents=true" : "";
  const done = await guarded(() => del(`/sources/${encodeURIComponent(source.id)}${query}`), note);
  if (done !== undefined) {
    note.classList.remove("error");
    const removed = done && done.documents_removed != null ? `: ${done.documents_removed} documents removed` : "";
    note.textContent = `Deleted ${source.url}${removed}.`;
  }
  await refresh();
}

function row(source) {
  const submit = document.body.dataset.scopes.includes("submit");
  return h(
    "tr",
    { "data-source": source.id },
    h("td", {}, h("a", { href: source.url, target: "_blank", rel: "noopener noreferrer" }, source.url)),
    h("td", {}, source.brand),
    h("td", {}, every(source.refresh_s)),
    h("td", {}, lastCrawl(source.last_crawl)),
    h("td", { title: when(source.next_due), class: "next-due" }, until(source.next_due)),
    h(
      "td",
      {},
      h("a", { href: `#documents/source=${encodeURIComponent(source.id)}` }, "Documents"),
      submit ? [" ", h("button", { type: "button", class: "danger", onclick: () => remove(source) }, "Delete")] : "",
    ),
  );
}

async function refresh() {
  const list = await guarded(() => get("/sources"));
  if (!list) return false;
  brandsSeen(list.items.map((s) => s.brand));
  tbody.replaceChildren(...list.items.map(row));
  empty.hidden = list.items.length > 0;
  return true;
}

// Polled while the panel is shown: next crawls count down, last crawls finish.
async function poll() {
  clearTimeout(timer);
  if (panel.hidden) return;
  if (await refresh()) timer = setTimeout(poll, POLL_MS);
}

export async function show() {
  await poll();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = form.querySelector(".result");
  result.classList.remove("error");
  result.textContent = "";
  const body = {
    url: form.url.value.trim(),
    brand: form.brand.value.trim(),
    refresh_s: Math.round(Number(form.refresh_min.value) * 60),
    max_pages: Number(form.max_pages.value),
    max_depth: Number(form.max_depth.value),
  };
  const made = await guarded(() => post("/sources", body), result);
  if (!made) return;
  const due = until(made.next_due);
  result.replaceChildren(due === "due now" ? "Added; its first crawl starts now." : `Added; its first crawl starts ${due}.`);
  form.url.value = "";
  await refresh();
});
