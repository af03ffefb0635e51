// The gateway's API: the key from session storage as a Bearer header, errors as the API's detail.
export const KEY = "helpline-api-key";
const BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, detail, fields) {
    super(detail);
    this.status = status;
    this.fields = fields || [];
  }
}

export function key() {
  return sessionStorage.getItem(KEY) || "";
}

function headers(extra) {
  return { Authorization: `Bearer ${key()}`, ...extra };
}

async function failure(response) {
  let detail = `${response.status} ${response.statusText}`;
  let fields = [];
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
    if (Array.isArray(body.errors)) fields = body.errors;
  } catch {
    // Not JSON (a proxy's page): the status line says enough.
  }
  if (fields.length) {
    detail += ": " + fields.map((f) => (f.field ? `${f.field}: ${f.message}` : f.message)).join("; ");
  }
  return new ApiError(response.status, detail, fields);
}

export async function call(method, path, body) {
  let response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `cannot reach the gateway (${err.message})`);
  }
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body ?? {});
export const del = (path) => call("DELETE", path);

// POST with {"stream": true}: each server-sent event to onEvent(name, data) as it arrives.
// EventSource cannot POST nor send a header, hence fetch and the body's reader.
export async function stream(path, body, onEvent) {
  let response;
  try {
    response = await fetch(BASE + path, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `cannot reach the gateway (${err.message})`);
  }
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
  return response;
}

// Which scopes the key holds, learnt from what the API lets it do (admin holds them all).
export async function scopes() {
  const probe = async (method, path, body, allowed) => {
    try {
      await call(method, path, body);
      return true;
    } catch (err) {
      if (err.status === 401 || err.status === 0) throw err;
      return allowed.includes(err.status);
    }
  };
  if (await probe("GET", "/keys", undefined, [])) return ["admin", "submit", "query"];
  const found = [];
  // A valid scope gets past the guard to the body's validation (422).
  if (await probe("POST", "/query", {}, [422])) found.push("query");
  if (await probe("GET", "/tasks?limit=1", undefined, [])) found.push("submit");
  return found;
}
