// The console: sign-in, the panels the key's scopes allow, hash navigation (#panel/arg).
import { KEY, scopes } from "./api.js";
import { flash } from "./ui.js";
import * as ask from "./ask.js";
import * as tasks from "./tasks.js";
import * as crawl from "./crawl.js";
import * as ops from "./ops.js";
import * as keys from "./keys.js";
import * as sources from "./sources.js";
import * as documents from "./documents.js";

const PANELS = { ask, tasks, crawl, sources, documents, ops, keys };
const tabs = document.getElementById("tabs");
const signin = document.getElementById("signin");
let allowed = [];

function panelsFor(held) {
  return [...tabs.querySelectorAll("a")].filter((a) => held.includes(a.dataset.scope)).map((a) => a.dataset.panel);
}

function route() {
  if (!allowed.length) return;
  const [name, arg] = location.hash.slice(1).split("/");
  const panel = allowed.includes(name) ? name : allowed[0];
  for (const a of tabs.querySelectorAll("a")) {
    if (a.dataset.panel === panel) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  for (const id of Object.keys(PANELS)) document.getElementById(id).hidden = id !== panel;
  if (panel !== "tasks") tasks.hide();
  flash("");
  PANELS[panel].show(arg);
}

async function start() {
  if (!sessionStorage.getItem(KEY)) {
    signin.hidden = false;
    document.getElementById("api-key").focus();
    return;
  }
  let held;
  try {
    held = await scopes();
  } catch (err) {
    if (err.status === 401) sessionStorage.removeItem(KEY);
    signin.hidden = !!sessionStorage.getItem(KEY);
    flash(err.message);
    return;
  }
  allowed = panelsFor(held);
  document.body.dataset.scopes = held.join(" ");
  for (const a of tabs.querySelectorAll("a")) a.hidden = !allowed.includes(a.dataset.panel);
  signin.hidden = true;
  tabs.hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("who-scopes").textContent = held.length ? `scopes: ${held.join(", ")}` : "this key has no scope";
  if (!allowed.length) flash("This key may not use any panel of the console.");
  route();
}

document.getElementById("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, event.target.key.value.trim());
  event.target.reset();
  start();
});

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.hash = "";
  location.reload();
});

window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (event) => flash(event.reason?.message || String(event.reason)));
start();
