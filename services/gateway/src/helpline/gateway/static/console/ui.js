// Small DOM helpers: elements built from data (never HTML from the API), times, the flash line.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

export function flash(message) {
  const box = document.getElementById("flash");
  box.textContent = message || "";
  box.hidden = !message;
}

// Runs `work` and shows its ApiError (the API's detail) in `where` (or the flash line).
export async function guarded(work, where) {
  try {
    return await work();
  } catch (err) {
    const message = err && err.message ? err.message : String(err);
    if (where) {
      where.textContent = message;
      where.classList.add("error");
    } else flash(message);
    return undefined;
  }
}

export function table(headers, rows, note) {
  return h(
    "div",
    { class: "scroll" },
    rows.length
      ? h(
          "table",
          {},
          h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
          h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))),
        )
      : "",
    note ? h("p", { class: "hint" }, note) : "",
  );
}

export function brandsSeen(brands) {
  const list = document.getElementById("brands");
  const have = new Set([...list.options].map((o) => o.value));
  for (const brand of brands) {
    if (brand && !have.has(brand)) {
      have.add(brand);
      list.append(h("option", { value: brand }));
    }
  }
}
