import { get, del } from "./api.js";
import { h, when, ago, guarded, brandsSeen, table } from "./ui.js";

const TERMINAL = new Set(["succeeded", "failed", "expired", "cancelled"]);
const POLL_MS = 1500;
const filters = document.getElementById("task-filters");
const tbody = document.querySelector("#task-list tbody");
const empty = document.getElementById("task-empty");
const detail = document.getElementById("task-detail");
const detailBody = document.getElementById("task-detail-body");
let timer = null;
let selected = null;

function bar(task) {
  const p = task.progress;
  if (!p || !p.total) return TERMINAL.has(task.status) ? "" : h("span", { class: "meta" }, "…");
  return h(
    "span",
    { class: "progress" },
    h("progress", { max: p.total, value: p.done, "aria-label": `${task.kind} progress` }),
    ` ${p.done}/${p.total}`,
  );
}

function cancelButton(task) {
  if (TERMINAL.has(task.status)) return "";
  return h("button", { type: "button", class: "cancel danger", onclick: () => cancel(task.task_id) }, "Cancel");
}

async function cancel(id) {
  await guarded(async () => {
    await del(`/tasks/${encodeURIComponent(id)}`);
    await refresh();
  });
}

function row(task) {
  return h(
    "tr",
    { "data-task": task.task_id, "data-status": task.status, class: task.task_id === selected ? "selected" : "" },
    h("td", {}, h("a", { href: `#tasks/${task.task_id}`, class: "mono" }, task.task_id.slice(0, 12))),
    h("td", {}, task.kind),
    h("td", {}, task.brand ?? ""),
    h("td", {}, h("span", { class: `status ${task.status}` }, task.status)),
    h("td", {}, bar(task)),
    h("td", { title: when(task.created_at) }, ago(task.created_at)),
    h("td", {}, cancelButton(task)),
  );
}

function query() {
  const params = new URLSearchParams({ limit: "50" });
  for (const name of ["kind", "status", "brand"]) {
    const value = filters.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

async function refresh() {
  const tasks = await guarded(() => get(`/tasks?${query()}`));
  if (!tasks) return;
  brandsSeen(tasks.map((t) => t.brand));
  tbody.replaceChildren(...tasks.map(row));
  empty.hidden = tasks.length > 0;
  if (selected) await showDetail(selected);
}

function field(name, value) {
  return value === null || value === undefined || value === "" ? null : [h("dt", {}, name), h("dd", {}, value)];
}

async function showDetail(id) {
  const task = await guarded(() => get(`/tasks/${encodeURIComponent(id)}`), detailBody);
  detail.hidden = false;
  if (!task) return;
  detailBody.classList.remove("error");
  detail.dataset.status = task.status;
  // Children: the tasks this one started (a crawl's or a batch's pages).
  let children = [];
  if (task.kind === "crawl" || task.kind === "scrape") {
    const recent = (await guarded(() => get("/tasks?limit=1000"))) || [];
    children = recent.filter((t) => t.parent_id === task.task_id);
  }
  const failed = children.filter((c) => c.error);
  detailBody.replaceChildren(
    h(
      "dl",
      {},
      field("Id", h("span", { class: "mono" }, task.task_id)),
      field("Kind", task.kind),
      field("Status", h("span", { class: `status ${task.status}` }, task.status)),
      field("Brand", task.brand),
      field("Progress", task.progress ? bar(task) : null),
      field("Attempts", task.attempts),
      field("Created", when(task.created_at)),
      field("Started", when(task.started_at)),
      field("Finished", when(task.finished_at)),
      field("Parent", task.parent_id ? h("a", { href: `#tasks/${task.parent_id}` }, task.parent_id) : null),
      field("Error", task.error ? `${task.error.type}: ${task.error.message}` : null),
      field("Trace", task.trace_id && document.body.dataset.scopes.includes("admin")
        ? h("a", { href: `/traces/${task.trace_id}`, target: "_blank", rel: "noopener" }, task.trace_id) : null),
    ),
    cancelButton(task),
    task.result ? h("details", {}, h("summary", {}, "Result"), h("pre", {}, JSON.stringify(task.result, null, 2))) : "",
    children.length
      ? h("h4", {}, `Children: ${children.length}, ${failed.length} failed`)
      : "",
    children.length
      ? table(
          ["Task", "Kind", "Status", "Reason"],
          children.map((c) => [
            h("a", { href: `#tasks/${c.task_id}`, class: "mono" }, c.task_id.slice(0, 12)),
            c.kind,
            h("span", { class: `status ${c.status}` }, c.status),
            c.error ? `${c.error.type}: ${c.error.message}` : "",
          ]),
        )
      : "",
  );
}

filters.addEventListener("change", refresh);
filters.addEventListener("submit", (e) => {
  e.preventDefault();
  refresh();
});

export async function show(id) {
  selected = id || null;
  detail.hidden = !selected;
  await refresh();
  clearInterval(timer);
  timer = setInterval(refresh, POLL_MS);
}

export function hide() {
  clearInterval(timer);
  timer = null;
}
