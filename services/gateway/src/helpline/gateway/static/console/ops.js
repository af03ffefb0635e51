import { get, post } from "./api.js";
import { h, when, ago, guarded, table } from "./ui.js";

const body = document.getElementById("ops-body");

function section(title, id, ...content) {
  return h("section", { class: "card", id, "aria-labelledby": `${id}-h` }, h("h3", { id: `${id}-h` }, title), ...content);
}

// Each view fetched alone: one that fails shows its detail, the others still show.
async function part(title, id, path, render) {
  const note = h("p", { class: "error" });
  const data = await guarded(() => get(path), note);
  return section(title, id, data === undefined ? note : render(data));
}

// Queues with anything in them, first by kind then priority; the empty ones are counted.
const busy = (qs) => qs.filter((q) => q.pending || q.in_flight || q.redelivered);

function traceLink(entry) {
  if (!entry.trace_url && !entry.trace_id) return "";
  return h("a", { href: entry.trace_url || `/traces/${entry.trace_id}`, target: "_blank", rel: "noopener" }, "trace");
}

async function replay(id) {
  const accepted = await guarded(() => post(`/dlq/${encodeURIComponent(id)}/replay`, {}));
  if (accepted) location.hash = `#tasks/${accepted.task_id}`;
}

async function clearCache() {
  const cleared = await guarded(() => post("/cache/clear", {}));
  if (cleared) await show();
}

export async function show() {
  const parts = await Promise.all([
    part("Queues", "ops-queues", "/queues", (qs) =>
      table(
        ["Kind", "Priority", "Pending", "In flight", "Redelivered", "Oldest"],
        busy(qs).map((q) => [q.kind, q.priority, q.pending, q.in_flight, q.redelivered, q.oldest_age_s == null ? "" : `${q.oldest_age_s.toFixed(1)} s`]),
        `${qs.length - busy(qs).length} of ${qs.length} queues empty`,
      ),
    ),
    part("Workers", "ops-workers", "/workers", (ws) =>
      table(
        ["Service", "Replicas", "Busy / slots", "Last seen"],
        ws.map((w) => [w.service, w.replica_count, `${w.busy} / ${w.concurrency}`, ago(w.last_seen)]),
      ),
    ),
    part("Breakers", "ops-breakers", "/breakers", (rs) => {
      const rows = rs.flatMap((r) => r.breakers.map((b) => [r.replica, b.name, h("span", { class: `status ${b.state}` }, b.state), b.consecutive_failures, b.times_opened]));
      return rows.length ? table(["Replica", "Breaker", "State", "Failures", "Times opened"], rows) : h("p", { class: "hint" }, "No breakers reported.");
    }),
    part("Answer cache", "ops-cache", "/cache/stats", (c) =>
      h(
        "div",
        {},
        h("p", {}, `${c.entries} entries, ${(c.bytes / 1024).toFixed(1)} KB; ${c.hits} hits, ${c.misses} misses (${(c.hit_rate * 100).toFixed(0)} %); TTL ${c.ttl_s} s`),
        h("button", { type: "button", onclick: clearCache }, "Clear cache"),
      ),
    ),
    part("Dead letters", "ops-dlq", "/dlq?limit=50", (ds) =>
      ds.length
        ? table(
            ["Task", "Kind", "Failed", "Error", "", ""],
            ds.map((d) => [
              h("span", { class: "mono" }, d.task_id.slice(0, 12)),
              d.kind,
              ago(d.failed_at),
              d.error?.message ?? JSON.stringify(d.error),
              traceLink(d),
              h("button", { type: "button", class: "replay", "data-task": d.task_id, onclick: () => replay(d.task_id) }, "Replay"),
            ]),
          )
        : h("p", { class: "hint" }, "No dead letters."),
    ),
    part("Slow requests", "ops-slow", "/metrics/slow-requests?limit=20", (rs) =>
      rs.length
        ? table(["When", "Request", "Status", "ms", ""], rs.map((r) => [when(r.at), `${r.method} ${r.route}`, r.status, Math.round(r.duration_ms), traceLink(r)]))
        : h("p", { class: "hint" }, "No slow requests."),
    ),
    part("Errors", "ops-errors", "/metrics/errors?limit=20", (rs) =>
      rs.length
        ? table(
            ["When", "What", "Status", "Error", ""],
            rs.map((r) => [
              when(r.at),
              r.source === "task" ? `${r.kind} task ${r.task_id.slice(0, 12)}` : `${r.method} ${r.route}`,
              r.status,
              r.error && typeof r.error === "object" ? `${r.error.type}: ${r.error.message}` : r.error ?? "",
              traceLink(r),
            ]),
          )
        : h("p", { class: "hint" }, "No errors."),
    ),
  ]);
  body.replaceChildren(...parts);
}

document.getElementById("ops-refresh").addEventListener("click", show);
