import { stream } from "./api.js";
import { h, when, guarded } from "./ui.js";

const form = document.getElementById("ask-form");
const article = document.getElementById("answer");
const textBox = document.getElementById("answer-text");
const meta = document.getElementById("answer-meta");
const list = document.getElementById("answer-sources");
const button = document.getElementById("ask-button");

// The answer's text with each [n] a link to source n (text nodes only: nothing is parsed as HTML).
function render(text, count) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(/\[(\d+)\]/g)) {
    const n = Number(match[1]);
    if (n < 1 || n > count) continue;
    parts.push(text.slice(last, match.index));
    parts.push(h("a", { href: `#source-${n}`, class: "cite", "aria-label": `source ${n}` }, `[${n}]`));
    last = match.index + match[0].length;
  }
  parts.push(text.slice(last));
  textBox.replaceChildren(...parts);
}

function showSources(sources) {
  list.replaceChildren(
    ...sources.map((s, i) =>
      h(
        "li",
        { id: `source-${i + 1}`, tabindex: "-1" },
        h("a", { href: s.url, target: "_blank", rel: "noopener noreferrer", class: "source-link" }, s.title || s.url),
        h("p", { class: "snippet" }, s.snippet),
        h("p", { class: "meta" }, s.url, s.fetched_at ? ` · fetched ${when(s.fetched_at)}` : ""),
      ),
    ),
  );
}

// A click on [n] moves focus to that source (the hash alone would switch panels).
textBox.addEventListener("click", (event) => {
  const link = event.target.closest("a.cite");
  if (!link) return;
  event.preventDefault();
  const target = document.getElementById(link.getAttribute("href").slice(1));
  target?.scrollIntoView({ block: "nearest" });
  target?.focus();
});

// Enter asks (Shift+Enter: a new line), as in a chat box.
form.question.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = form.question.value.trim();
  if (!question || button.disabled) return;
  const brand = form.brand.value.trim() || null;
  sessionStorage.setItem("helpline-brand", brand || "");
  let text = "";
  let sources = [];
  const started = performance.now();
  article.hidden = false;
  article.dataset.state = "streaming";
  delete article.dataset.firstTokenMs;
  textBox.replaceChildren();
  list.replaceChildren();
  meta.textContent = "asking…";
  meta.classList.remove("error");
  button.disabled = true;
  const body = { question, brand, stream: true, cache: document.getElementById("ask-cache").checked };
  await guarded(async () => {
    let traceId = null;
    const response = await stream("/query", body, (name, data) => {
      if (name === "sources") {
        sources = data.sources;
        showSources(sources);
      } else if (name === "delta") {
        if (article.dataset.firstTokenMs === undefined) {
          article.dataset.firstTokenMs = String(Math.round(performance.now() - started));
        }
        text += data.text;
        render(text, sources.length);
      } else if (name === "reset") {
        text = "";
        render(text, sources.length);
      } else if (name === "error") {
        throw new Error(data.detail);
      } else if (name === "done") {
        article.dataset.state = "done";
        const bits = [data.cached ? "cached" : "answered", `${Math.round(data.duration_ms)} ms`];
        if (data.answer_mode && data.answer_mode !== "generative") bits.push(data.answer_mode);
        if (article.dataset.firstTokenMs) bits.push(`first words after ${article.dataset.firstTokenMs} ms`);
        meta.replaceChildren(bits.join(" · "));
      }
    });
    traceId = response.headers.get("x-trace-id");
    if (traceId && document.body.dataset.scopes.includes("admin")) {
      meta.append(" · ", h("a", { href: `/traces/${traceId}`, target: "_blank", rel: "noopener" }, "trace"));
    }
    if (article.dataset.state !== "done") throw new Error("the answer stream ended early");
  }, meta);
  if (article.dataset.state !== "done") article.dataset.state = "failed";
  button.disabled = false;
});

export function show() {
  if (!form.brand.value) form.brand.value = sessionStorage.getItem("helpline-brand") || "";
  form.question.focus();
}
