import { post } from "./api.js";
import { h, guarded } from "./ui.js";

function body(form) {
  const data = {};
  for (const el of form.elements) {
    if (!el.name || el.value === "") continue;
    if (el.name === "urls") data.urls = el.value.split(/\s+/).filter(Boolean);
    else if (el.type === "number") data[el.name] = Number(el.value);
    else data[el.name] = el.value.trim();
  }
  // The embed route takes documents; this form makes one.
  return form.dataset.path === "/embed" ? { documents: [data] } : data;
}

for (const form of document.querySelectorAll("#crawl form")) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = form.querySelector(".result");
    result.classList.remove("error");
    result.textContent = "";
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const accepted = await guarded(() => post(form.dataset.path, body(form)), result);
    button.disabled = false;
    if (accepted) {
      result.replaceChildren("Started ", h("a", { href: `#tasks/${accepted.task_id}`, class: "mono" }, accepted.task_id));
    }
  });
}

export function show() {}
