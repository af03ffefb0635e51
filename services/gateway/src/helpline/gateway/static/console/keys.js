import { get, post, del } from "./api.js";
import { h, when, ago, guarded } from "./ui.js";

const form = document.getElementById("key-form");
const tbody = document.querySelector("#key-list tbody");

async function revoke(key) {
  if (!confirm(`Revoke the key ${key.name} (${key.id})? Every call with it is refused from now on.`)) return;
  await guarded(() => del(`/keys/${encodeURIComponent(key.id)}`));
  await show();
}

export async function show() {
  const keys = await guarded(() => get("/keys"));
  if (!keys) return;
  tbody.replaceChildren(
    ...keys.map((k) =>
      h(
        "tr",
        { "data-key": k.id },
        h("td", {}, k.name),
        h("td", { class: "mono" }, k.id),
        h("td", {}, k.scopes.join(", ")),
        h("td", {}, k.brands ? k.brands.join(", ") : "every brand"),
        h("td", { title: when(k.created_at) }, ago(k.created_at)),
        h("td", {}, k.last_used_at ? ago(k.last_used_at) : "never"),
        // The bootstrap admin key is set by HELPLINE_ADMIN_KEY; the API refuses to revoke it.
        h("td", {}, k.id === "admin" ? "" : h("button", { type: "button", class: "danger", onclick: () => revoke(k) }, "Revoke")),
      ),
    ),
  );
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = form.querySelector(".result");
  result.textContent = "";
  result.classList.remove("error");
  const scopes = [...form.querySelectorAll("input[name=scopes]:checked")].map((i) => i.value);
  const brands = form.brands.value.split(",").map((b) => b.trim()).filter(Boolean);
  const body = { name: form.elements.name.value.trim(), scopes, brands: brands.length ? brands : null };
  if (form.rate_per_minute.value) body.rate_per_minute = Number(form.rate_per_minute.value);
  const made = await guarded(() => post("/keys", body), result);
  if (!made) return;
  result.replaceChildren(
    h("strong", {}, "The new key, shown this once: "),
    h("code", { id: "new-key" }, made.key),
  );
  await show();
});
