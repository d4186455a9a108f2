// The Reporunner console: our own small script, no framework, no CDN.
// It calls the JSON APIs with the API key from sessionStorage as the bearer
// header (never in a URL), draws charts and graphs as SVG, and follows
// GET /v1/stream (fetch + ReadableStream: EventSource cannot send the header),
// polling instead where that endpoint is absent.
"use strict";

const CONFIG = JSON.parse(document.getElementById("console-config").textContent);
const KEY_SLOT = "reporunner.apiKey";
const view = document.getElementById("view");
let session = null; // {org_id, role, key_name, permissions, write_api_url}
let cleanups = []; // what the current page started (streams, timers), stopped on leaving it
let renderGeneration = 0;
// The newest log position a stream event showed: re-reads after it send it as
// X-Min-Position, so a view the event has not reached yet is waited for, not shown stale.
let seenPosition = 0;
// How far the views were at the last read: a stream starts after it, so an event that
// lands between a page's read and its stream's start still reaches the page.
let readPosition = 0;

// -- small helpers ---------------------------------------------------------------------

/** An element with attributes and children (strings become text: never parsed as HTML). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  appendAll(el, children);
  return el;
}
function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}
const SVG_NS = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  appendAll(el, children);
  return el;
}
function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}
function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms} ms`;
}
function fmtRate(rate) {
  return rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(1)} %`;
}
function statusBadge(status) {
  return h("span", { class: `status status-${status}`, "data-status": status }, status);
}
function link(href, text) {
  return h("a", { href, onclick: navigate }, text);
}
function can(permission) {
  return Boolean(session && session.permissions.includes(permission));
}
function onLeave(fn) {
  cleanups.push(fn);
}

// -- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** Calls an API path with the key; answers {data, headers, status} or throws ApiError. */
async function api(path, { method = "GET", body, headers = {}, write = false } = {}) {
  const base = write && session ? session.write_api_url : "";
  const sent = { Authorization: `Bearer ${sessionStorage.getItem(KEY_SLOT) || ""}`, ...headers };
  if (method === "GET" && seenPosition > 0 && path.startsWith("/v1/") && !("X-Min-Position" in sent)) {
    sent["X-Min-Position"] = String(seenPosition);
  }
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(base + path, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, { title: "Network error", detail: `${method} ${path}: ${err.message}` });
  }
  const viewsAt = Number(res.headers.get("X-Projection-Position"));
  if (Number.isInteger(viewsAt) && viewsAt > 0) readPosition = Math.max(readPosition, viewsAt);
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { title: res.statusText, detail: text.slice(0, 500) };
  }
  if (!res.ok) {
    if (res.status === 401 && !write) signOut(data);
    throw new ApiError(res.status, data && typeof data === "object" ? data : { detail: text });
  }
  return { data, headers: res.headers, status: res.status };
}
const query = (params) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
};

/** An API problem as the page shows it: status, title, detail, and any other member. */
function problemBox(err) {
  const problem = err instanceof ApiError ? err.problem : { title: "Error", detail: String(err) };
  const status = err instanceof ApiError ? err.status : "";
  const extra = Object.fromEntries(
    Object.entries(problem || {}).filter(([k]) => !["type", "title", "status", "detail"].includes(k)),
  );
  return h(
    "div",
    { class: "problem", role: "alert", "data-problem-status": status },
    h("strong", {}, `${status} ${problem.title || ""}`.trim()),
    problem.detail ? h("p", { class: "problem-detail" }, problem.detail) : null,
    problem.type ? h("p", { class: "muted" }, problem.type) : null,
    Object.keys(extra).length ? h("pre", {}, JSON.stringify(extra, null, 2)) : null,
  );
}

// -- the live stream -------------------------------------------------------------------

// The one stream this tab holds (the API caps streams per organisation). A page that
// re-draws itself in place asks for the same stream again and keeps it; leaving the
// page, or a re-draw that no longer asks for it, ends it.
let stream = null; // {key, handler, claimed, stop}

/**
 * Follows GET /v1/stream with ``params`` (types, aggregate_id); calls onEvent(event)
 * for each. Resumes from the last id after a drop. Where the stream is absent (404)
 * or refused (e.g. 429), calls onEvent(null) every ``pollMs`` instead: the page re-reads.
 */
function follow(params, onEvent, pollMs = 2000) {
  const key = JSON.stringify(params);
  if (stream && stream.key === key) {
    stream.handler = onEvent;
    stream.claimed = true;
    return;
  }
  stopStream();
  const controller = new AbortController();
  const current = { key, handler: onEvent, claimed: true, stop: null };
  let lastId = null;
  let stopped = false;
  let timer = null;
  const live = document.getElementById("live");
  const poll = (why) => {
    live.textContent = `polling (${why})`;
    timer = setInterval(() => current.handler(null), pollMs);
  };
  const connect = async () => {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY_SLOT) || ""}`, Accept: "text/event-stream" };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    const from = lastId === null && readPosition > 0 ? { after: readPosition } : {};
    let res;
    try {
      res = await fetch(`/v1/stream${query({ ...params, ...from })}`, { headers, signal: controller.signal });
    } catch {
      if (!stopped) setTimeout(connect, 1000);
      return;
    }
    if (!res.ok || !res.body) {
      if (!stopped) poll(res.status === 404 ? "no stream here" : `stream answered ${res.status}`);
      return;
    }
    live.textContent = "● live";
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
          const message = { id: null, data: [] };
          for (const line of block.split(/\r?\n/)) {
            if (!line || line.startsWith(":")) continue; // a heartbeat or comment
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "id") message.id = text;
            else if (field === "data") message.data.push(text);
          }
          if (message.id !== null) lastId = message.id;
          if (!message.data.length) continue;
          let event;
          try {
            event = JSON.parse(message.data.join("\n"));
          } catch {
            continue; // not an event of ours
          }
          if (Number.isInteger(event.position)) seenPosition = Math.max(seenPosition, event.position);
          current.handler(event);
        }
      }
    } catch {
      /* dropped (or stopped): reconnect below unless stopped */
    }
    if (!stopped) {
      live.textContent = "reconnecting…";
      setTimeout(connect, 1000);
    }
  };
  current.stop = () => {
    stopped = true;
    controller.abort();
    if (timer) clearInterval(timer);
    live.textContent = "";
  };
  stream = current;
  connect();
}
function stopStream() {
  if (stream) stream.stop();
  stream = null;
}

/** ``fn`` at most once per ``ms`` (the last call wins): events come in bursts. */
function throttled(fn, ms = 500) {
  let pending = null;
  return () => {
    if (pending) return;
    pending = setTimeout(() => {
      pending = null;
      fn();
    }, ms);
    onLeave(() => clearTimeout(pending));
  };
}

// -- routing ---------------------------------------------------------------------------

function navigate(event) {
  const a = event.currentTarget;
  if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  go(a.getAttribute("href"));
}
function go(path) {
  history.pushState({}, "", path);
  render();
}
window.addEventListener("popstate", () => render());

const ROUTES = [
  [/^\/ui\/?$/, () => overviewPage()],
  [/^\/ui\/overview$/, () => overviewPage()],
  [/^\/ui\/workflows$/, () => workflowsPage()],
  [/^\/ui\/workflows\/([0-9a-f-]{36})$/, (id) => workflowPage(id)],
  [/^\/ui\/executions$/, () => executionsPage()],
  [/^\/ui\/executions\/([0-9a-f-]{36})$/, (id) => executionPage(id)],
  [/^\/ui\/audit$/, () => auditPage()],
  [/^\/ui\/system$/, () => systemPage()],
];

async function render() {
  for (const fn of cleanups.splice(0)) fn();
  stopStream();
  const generation = ++renderGeneration;
  if (!session) return showSignIn();
  const path = location.pathname;
  const section = path.split("/")[2] || "overview";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  view.dataset.ready = "false";
  view.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  let content;
  try {
    const match = ROUTES.map(([re, page]) => [path.match(re), page]).find(([m]) => m);
    if (!match) throw new ApiError(404, { title: "Not Found", detail: `no console page at ${path}` });
    content = await match[1](...match[0].slice(1));
  } catch (err) {
    content = h("section", {}, h("h1", {}, "Something went wrong"), problemBox(err));
  }
  if (generation !== renderGeneration) return; // the user moved on meanwhile
  view.replaceChildren(content);
  view.dataset.ready = "true";
  document.title = `${content.querySelector("h1")?.textContent || "Console"} · Reporunner`;
}

// -- signing in ------------------------------------------------------------------------

const signInSection = document.getElementById("sign-in");
function showSignIn(problem) {
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  view.replaceChildren(signInSection);
  signInSection.hidden = false;
  const box = document.getElementById("sign-in-error");
  box.replaceChildren(problem ? problemBox(problem) : "");
  view.dataset.ready = "true";
  document.getElementById("api-key").focus();
}
function signOut(problem) {
  sessionStorage.removeItem(KEY_SLOT);
  sessionStorage.removeItem(SESSION_SLOT);
  session = null;
  if (problem) showSignIn(problem instanceof ApiError ? problem : new ApiError(401, problem));
}
const SESSION_SLOT = "reporunner.session";
async function startSession() {
  view.dataset.ready = "false";
  // Who the key is does not change (a key's role is fixed): asked once per tab, not per page.
  const known = sessionStorage.getItem(SESSION_SLOT);
  try {
    session = known ? JSON.parse(known) : (await api("/ui/api/session")).data;
  } catch (err) {
    sessionStorage.removeItem(KEY_SLOT);
    session = null;
    showSignIn(err);
    return;
  }
  sessionStorage.setItem(SESSION_SLOT, JSON.stringify(session));
  if (!session.write_api_url) session.write_api_url = CONFIG.write_api_url || "";
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  document.getElementById("who").textContent = [session.key_name, session.role, session.org_id].filter(Boolean).join(" · ");
  document.getElementById("who").dataset.role = session.role;
  await render();
}
document.getElementById("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("api-key");
  sessionStorage.setItem(KEY_SLOT, input.value.trim());
  sessionStorage.removeItem(SESSION_SLOT);
  input.value = "";
  await startSession();
});
document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  stopStream();
  for (const fn of cleanups.splice(0)) fn();
  showSignIn();
});
for (const a of document.querySelectorAll("#nav a")) a.addEventListener("click", navigate);

/** Asks before a mutation, in an accessible modal dialog; resolves true on Confirm. */
function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  });
}

/** A button that runs ``action``; its error (a problem) shows in ``out``. */
function actionButton(label, action, out, attrs = {}) {
  const button = h("button", { type: "button", ...attrs }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    out.replaceChildren();
    try {
      await action();
    } catch (err) {
      out.replaceChildren(problemBox(err));
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

// -- charts ----------------------------------------------------------------------------

/** Executions per bucket as bars (failed ones in red on top), with the axis and labels. */
function seriesChart(series, granularity) {
  const width = 900, height = 220, left = 44, bottom = 28, top = 10;
  const max = Math.max(1, ...series.map((p) => p.executions));
  const barWidth = (width - left - 10) / Math.max(1, series.length);
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const svg = s("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
    "aria-label": `Executions per ${granularity}: ${series.reduce((a, p) => a + p.executions, 0)} in all, at most ${max} in one ${granularity}`,
  });
  for (const tick of [0, max / 2, max]) {
    svg.append(s("line", { x1: left, x2: width - 10, y1: y(tick), y2: y(tick), stroke: "#e3e7ec" }));
    svg.append(s("text", { x: left - 6, y: y(tick) + 4, "text-anchor": "end" }, Math.round(tick)));
  }
  const labelEvery = Math.max(1, Math.ceil(series.length / 12));
  series.forEach((point, i) => {
    const x = left + i * barWidth;
    const when = granularity === "hour" ? point.bucket.slice(11, 16) : point.bucket.slice(5, 10);
    const bar = s("g", { class: "bar" },
      s("title", {}, `${fmtTime(point.bucket)}: ${point.executions} executions, ${point.failed} failed`),
      s("rect", { x: x + 1, width: Math.max(1, barWidth - 2), y: y(point.executions), height: y(0) - y(point.executions), fill: "#8fb3e8" }),
      s("rect", { x: x + 1, width: Math.max(1, barWidth - 2), y: y(point.failed), height: y(0) - y(point.failed), fill: "#d9534f" }));
    svg.append(bar);
    if (i % labelEvery === 0) svg.append(s("text", { x: x + barWidth / 2, y: height - 10, "text-anchor": "middle" }, when));
  });
  return svg;
}

/** A workflow's nodes in columns by depth from its triggers, connections as arrows. */
function workflowGraph(nodes, connections) {
  const depth = Object.fromEntries(nodes.map((n) => [n.id, 0]));
  const incoming = new Set(connections.map((c) => c.to));
  // Longest path from a node without inbound connections (bounded: a cycle cannot loop us).
  for (let round = 0; round < nodes.length; round++) {
    let changed = false;
    for (const c of connections) {
      if (c.from in depth && c.to in depth && depth[c.to] < depth[c.from] + 1 && depth[c.from] + 1 < nodes.length) {
        depth[c.to] = depth[c.from] + 1;
        changed = true;
      }
    }
    if (!changed) break;
  }
  const columns = [];
  for (const node of nodes) (columns[depth[node.id]] ||= []).push(node);
  const boxW = 150, boxH = 44, gapX = 70, gapY = 24, pad = 16;
  const at = {};
  columns.forEach((column, ci) => column.forEach((node, ri) => {
    at[node.id] = { x: pad + ci * (boxW + gapX), y: pad + ri * (boxH + gapY) };
  }));
  const width = pad * 2 + columns.length * (boxW + gapX) - gapX;
  const height = pad * 2 + Math.max(1, ...columns.map((c) => c.length)) * (boxH + gapY) - gapY;
  const svg = s("svg", {
    class: "graph", viewBox: `0 0 ${Math.max(width, 200)} ${Math.max(height, 80)}`,
    width: Math.max(width, 200), height: Math.max(height, 80), role: "img",
    "aria-label": `Graph of ${nodes.length} nodes and ${connections.length} connections`,
  });
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" },
    s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#5b6675" }))));
  for (const c of connections) {
    const a = at[c.from], b = at[c.to];
    if (!a || !b) continue;
    const x1 = a.x + boxW, y1 = a.y + boxH / 2, x2 = b.x, y2 = b.y + boxH / 2;
    const mid = (x1 + x2) / 2;
    svg.append(s("path", {
      class: "edge", "data-from": c.from, "data-to": c.to, fill: "none", stroke: "#5b6675", "marker-end": "url(#arrow)",
      d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
    }, s("title", {}, `${c.from} → ${c.to}${c.output !== undefined ? ` (output ${c.output})` : ""}`)));
  }
  for (const node of nodes) {
    const { x, y } = at[node.id];
    const trigger = node.type.endsWith("_trigger") || !incoming.has(node.id);
    svg.append(s("g", { class: "node", "data-node-id": node.id },
      s("rect", { x, y, width: boxW, height: boxH, rx: 6, fill: trigger ? "#e3ecfb" : "#fff", stroke: "#1f5fbf" }),
      s("text", { x: x + 8, y: y + 18, "font-weight": 600 }, node.id.length > 20 ? `${node.id.slice(0, 19)}…` : node.id),
      s("text", { x: x + 8, y: y + 34, fill: "#5b6675" }, node.type)));
  }
  return svg;
}

/** Each node run as a bar from its start to its end, relative to the execution's start. */
function nodeTimeline(execution) {
  const runs = execution.node_runs || [];
  const origin = Date.parse(execution.started_at || execution.created_at);
  const endOf = (r) => (r.finished_at ? Date.parse(r.finished_at) : Date.now());
  const span = Math.max(1, ...runs.map((r) => endOf(r) - origin));
  const width = 900, rowH = 22, left = 160;
  const svg = s("svg", {
    class: "timeline", viewBox: `0 0 ${width} ${runs.length * rowH + 24}`, width: "100%", role: "img",
    "aria-label": `Timeline of ${runs.length} node runs over ${fmtMs(span)}`,
  });
  runs.forEach((run, i) => {
    const x = left + ((Date.parse(run.started_at) - origin) / span) * (width - left - 10);
    const w = Math.max(2, ((endOf(run) - Date.parse(run.started_at)) / span) * (width - left - 10));
    const color = run.status === "succeeded" ? "#4caf6e" : run.status === "failed" ? "#d9534f" : "#8fb3e8";
    svg.append(s("g", { class: "run", "data-node-id": run.node_id, "data-status": run.status },
      s("title", {}, `${run.node_id} attempt ${run.attempt}: ${run.status}`),
      s("text", { x: 4, y: i * rowH + 15 }, `${run.node_id} #${run.attempt}`),
      s("rect", { x, y: i * rowH + 4, width: w, height: rowH - 8, rx: 3, fill: color })));
  });
  svg.append(s("text", { x: left, y: runs.length * rowH + 18 }, "0"));
  svg.append(s("text", { x: width - 10, y: runs.length * rowH + 18, "text-anchor": "end" }, fmtMs(span)));
  return svg;
}

/** Line diff of two texts (LCS), as rows of [left, right, kind]. */
function lineDiff(a, b) {
  const x = a.split("\n"), y = b.split("\n");
  const n = x.length, m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const rows = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) rows.push([x[i++], y[j++], "same"]);
    else if (j < m && (i >= n || lcs[i][j + 1] >= lcs[i + 1][j])) rows.push([null, y[j++], "add"]);
    else rows.push([x[i++], null, "del"]);
  }
  return rows;
}
function sortedJson(value) {
  if (Array.isArray(value)) return value.map(sortedJson);
  if (value && typeof value === "object")
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortedJson(value[k])]));
  return value;
}
const DEFINITION = ["name", "description", "nodes", "connections", "tags", "settings"];
function definitionText(doc) {
  return JSON.stringify(sortedJson(Object.fromEntries(DEFINITION.map((k) => [k, doc[k]]))), null, 2);
}

// -- pages -----------------------------------------------------------------------------

const RANGES = [["24h", "Last 24 hours", 0], ["1h", "Last hour", 3600e3], ["48h", "Last 48 hours", 48 * 3600e3], ["7d", "Last 7 days", 7 * 86400e3], ["30d", "Last 30 days", 30 * 86400e3]];
const STATUSES = ["queued", "running", "succeeded", "failed", "canceled", "crashed"];

async function overviewPage() {
  const params = new URLSearchParams(location.search);
  const range = RANGES.find((r) => r[0] === params.get("range")) || RANGES[0];
  // The API's default period is the last 24 hours: that range sends no bounds.
  const bounds = range[2] ? { since: new Date(Date.now() - range[2]).toISOString() } : {};
  const { data } = await api(`/v1/dashboards/summary${query(bounds)}`);
  const select = h("select", { id: "range" }, RANGES.map(([value, label]) => h("option", { value, selected: value === range[0] }, label)));
  select.addEventListener("change", () => go(`/ui/overview?range=${select.value}`));
  const figure = (name, label, current, previous, shown = (v) => v) =>
    h("div", { class: "card" }, h("dt", {}, label),
      h("dd", { "data-figure": name, "data-value": JSON.stringify(current) }, shown(current),
        h("span", { class: "prev", "data-previous": name, "data-value": JSON.stringify(previous) }, `previous: ${shown(previous)}`)));
  const page = h("section", { "aria-labelledby": "overview-title" },
    h("h1", { id: "overview-title" }, "Overview"),
    h("div", { class: "toolbar" }, h("label", { for: "range" }, "Period", select),
      h("span", { class: "muted" }, `${fmtTime(data.period.since)} → ${fmtTime(data.period.until)}; previous ${fmtTime(data.previous.period.since)} → ${fmtTime(data.previous.period.until)}`)),
    h("h2", {}, "Executions by status"),
    h("dl", { class: "cards" },
      figure("totals.all", "All", data.totals.all, data.previous.totals.all),
      STATUSES.map((st) => figure(`totals.${st}`, st, data.totals[st], data.previous.totals[st])),
      figure("failure_rate", "Failure rate", data.failure_rate, data.previous.failure_rate, fmtRate)),
    h("h2", {}, "Duration"),
    h("dl", { class: "cards" }, ["p50", "p95", "p99", "mean"].map((p) =>
      figure(`duration_ms.${p}`, p, data.duration_ms[p], data.previous.duration_ms[p], (v) => (v === null ? "—" : fmtMs(v))))),
    h("h2", {}, "By trigger"),
    h("dl", { class: "cards" }, Object.keys(data.by_trigger).map((t) =>
      figure(`by_trigger.${t}`, t, data.by_trigger[t], data.previous.by_trigger[t] ?? 0))),
    h("h2", {}, `Executions per ${data.series_granularity}`),
    seriesChart(data.series, data.series_granularity),
    h("h2", {}, "Top failing workflows"),
    data.top_failing_workflows.length
      ? h("table", { id: "top-failing" },
        h("thead", {}, h("tr", {}, h("th", {}, "Workflow"), h("th", { class: "num" }, "Failed"), h("th", { class: "num" }, "Executions"), h("th", { class: "num" }, "Failure rate"))),
        h("tbody", {}, data.top_failing_workflows.map((w) => h("tr", {},
          h("td", {}, link(`/ui/workflows/${w.workflow_id}`, w.workflow_id)),
          h("td", { class: "num" }, w.failed), h("td", { class: "num" }, w.executions), h("td", { class: "num" }, fmtRate(w.failure_rate))))))
      : h("p", { class: "muted" }, "No failures in this period."));
  // Live: any execution event re-reads the figures (throttled).
  follow({ types: "Execution.*" }, throttled(() => refreshInPlace(), 1000), 5000);
  return page;
}

/** Re-draws the current page without a reload or a flash of "Loading…". */
async function refreshInPlace() {
  const generation = renderGeneration;
  const path = location.pathname;
  const match = ROUTES.map(([re, page]) => [path.match(re), page]).find(([m]) => m);
  if (!match) return;
  for (const fn of cleanups.splice(0)) fn();
  if (stream) stream.claimed = false;
  let content;
  try {
    content = await match[1](...match[0].slice(1));
  } catch (err) {
    content = h("section", {}, h("h1", {}, "Something went wrong"), problemBox(err));
  }
  if (generation !== renderGeneration) return;
  if (stream && !stream.claimed) stopStream(); // e.g. the execution has ended
  const focused = document.activeElement?.id;
  view.replaceChildren(content);
  if (focused) document.getElementById(focused)?.focus();
}

/** A keyset-paged table (a promise of it): ``load(cursor)`` answers a page; Previous/Next walk the cursors. */
function pagedTable(id, load, columns, state) {
  const holder = h("div", { id });
  const draw = async (quiet = false) => {
    if (!quiet) holder.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    let page;
    try {
      page = await load(state.cursors[state.cursors.length - 1]);
    } catch (err) {
      holder.replaceChildren(problemBox(err));
      return;
    }
    const prev = h("button", { type: "button", disabled: state.cursors.length === 1 }, "Previous page");
    const next = h("button", { type: "button", disabled: !page.next_cursor }, "Next page");
    prev.addEventListener("click", () => { state.cursors.pop(); draw(); });
    next.addEventListener("click", () => { state.cursors.push(page.next_cursor); draw(); });
    holder.replaceChildren(
      h("table", {},
        h("thead", {}, h("tr", {}, columns.map(([label]) => h("th", { scope: "col" }, label)))),
        h("tbody", {}, page.items.length
          ? page.items.map((item) => h("tr", { "data-id": item.id ?? item.position }, columns.map(([, cell]) => h("td", {}, cell(item)))))
          : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "Nothing matches.")))),
      h("div", { class: "pager" }, prev, next, h("span", { class: "muted", "data-page-number": state.cursors.length }, `page ${state.cursors.length}`)));
    state.lastPage = page;
  };
  state.redraw = draw;
  return draw().then(() => holder); // the page is drawn once its first page of rows is
}

const WORKFLOW_SORTS = [["-created_at", "Newest first"], ["created_at", "Oldest first"], ["name", "Name A–Z"], ["-name", "Name Z–A"], ["-updated_at", "Recently changed"], ["-runs", "Most runs"]];

async function workflowsPage() {
  const params = new URLSearchParams(location.search);
  const state = { cursors: [null] };
  const filter = h("input", { type: "text", id: "workflow-filter", name: "filter", value: params.get("filter") || "", placeholder: '{"tags": "billing"}', "aria-describedby": "filter-hint" });
  const sort = h("select", { id: "workflow-sort", name: "sort" }, WORKFLOW_SORTS.map(([v, label]) => h("option", { value: v, selected: v === (params.get("sort") || "-created_at") }, label)));
  const limit = h("select", { id: "workflow-limit", name: "limit" }, [10, 25, 50, 100].map((n) => h("option", { value: n, selected: String(n) === (params.get("limit") || "25") }, n)));
  const form = h("form", { class: "toolbar", role: "search" },
    h("label", { for: "workflow-filter" }, "Filter (Mongo-style JSON)", filter),
    h("label", { for: "workflow-sort" }, "Sort", sort),
    h("label", { for: "workflow-limit" }, "Per page", limit),
    h("button", { type: "submit", class: "primary" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    history.replaceState({}, "", `/ui/workflows${query({ filter: filter.value.trim(), sort: sort.value, limit: limit.value })}`);
    state.cursors = [null];
    state.redraw();
  });
  const table = await pagedTable("workflow-list", async (cursor) =>
    (await api(`/v1/workflows${query({ filter: filter.value.trim(), sort: sort.value, limit: limit.value, cursor })}`)).data,
  [
    ["Name", (w) => link(`/ui/workflows/${w.id}`, w.name)],
    ["Version", (w) => w.version],
    ["Active", (w) => (w.active ? "active" : "—")],
    ["Tags", (w) => w.tags.join(", ")],
    ["Runs", (w) => w.runs],
    ["Last execution", (w) => (w.last_execution ? statusBadge(w.last_execution.status) : "—")],
    ["Updated", (w) => fmtTime(w.updated_at)],
  ], state);
  return h("section", {}, h("h1", {}, "Workflows"), form,
    h("p", { id: "filter-hint", class: "hint" }, 'e.g. {"name": {"$regex": "^billing"}}, {"tags": {"$in": ["a","b"]}}, {"active": true}. Errors are the API\'s answer.'),
    table);
}

/** A workflow's revisions, oldest first: every page of them, up to MAX_REVISIONS. */
const MAX_REVISIONS = 2500;
async function allVersions(id) {
  const items = [];
  let cursor = null;
  do {
    const { data } = await api(`/v1/workflows/${id}/versions${query({ limit: 500, cursor })}`);
    items.push(...data.items);
    cursor = data.next_cursor;
  } while (cursor && items.length < MAX_REVISIONS);
  return items;
}

async function workflowPage(id) {
  const params = new URLSearchParams(location.search);
  const travel = params.get("version") ? { version: params.get("version") } : params.get("as_of") ? { as_of: params.get("as_of") } : {};
  const [current, triggers, versions, runs] = await Promise.all([
    api(`/v1/workflows/${id}`).then((r) => r.data),
    api(`/ui/api/workflows/${id}/triggers`).then((r) => r.data),
    allVersions(id),
    api(`/v1/workflows/${id}/executions?limit=10`).then((r) => r.data.items),
  ]);
  const shown = Object.keys(travel).length ? (await api(`/v1/workflows/${id}${query(travel)}`)).data : current;
  const out = h("div", { id: "workflow-actions-result", "aria-live": "polite" });
  const ifMatch = { "If-Match": `"${current.version}"` };
  const reload = async (position) => {
    // Read our own write: the views wait until they have the command's event.
    if (position !== undefined) await api(`/v1/workflows/${id}`, { headers: { "X-Min-Position": String(position) } });
    await refreshInPlace();
  };
  const actions = h("div", { class: "toolbar", id: "workflow-actions" });
  if (can("workflows:execute") && !current.deleted) {
    actions.append(actionButton("Run", async () => {
      const { data } = await api(`/v1/workflows/${id}/executions`, { method: "POST", body: { input: {}, mode: "async" }, write: true });
      out.replaceChildren(h("p", {}, "Queued ", link(`/ui/executions/${data.execution_id}`, data.execution_id), " ", statusBadge(data.status)));
    }, out, { class: "primary", id: "run-workflow" }));
  }
  if (can("workflows:write") && !current.deleted) {
    const verb = current.active ? "deactivate" : "activate";
    actions.append(actionButton(current.active ? "Deactivate" : "Activate", async () => {
      if (!(await confirmAction(`${verb[0].toUpperCase()}${verb.slice(1)} workflow “${current.name}”?`))) return;
      const { data } = await api(`/v1/workflows/${id}/${verb}`, { method: "POST", headers: ifMatch, write: true });
      if (data.webhook_secrets) out.replaceChildren(h("p", {}, "Webhook secrets (shown once): "), h("pre", {}, JSON.stringify(data.webhook_secrets, null, 2)));
      await reload(data.position);
    }, out, { id: `${verb}-workflow` }));
  }
  const diffOut = h("div", { id: "diff" });
  const pick = { a: versions.length > 1 ? versions[versions.length - 2].version : 1, b: current.version };
  const revisionRows = versions.map((v) => h("tr", { "data-version": v.version },
    h("td", {}, h("input", { type: "radio", name: "diff-a", value: v.version, "aria-label": `Diff from version ${v.version}`, checked: v.version === pick.a, onchange: () => { pick.a = v.version; } })),
    h("td", {}, h("input", { type: "radio", name: "diff-b", value: v.version, "aria-label": `Diff to version ${v.version}`, checked: v.version === pick.b, onchange: () => { pick.b = v.version; } })),
    h("td", { class: "num" }, v.version), h("td", {}, v.event), h("td", {}, v.changed.join(", ")), h("td", {}, fmtTime(v.at)), h("td", {}, v.by),
    h("td", {}, link(`/ui/workflows/${id}?version=${v.version}`, "View"),
      can("workflows:write") && v.version !== current.version && !current.deleted
        ? actionButton("Revert to this", async () => {
          if (!(await confirmAction(`Revert “${current.name}” to version ${v.version}? This makes a new version ${current.version + 1}.`))) return;
          const { data } = await api(`/v1/workflows/${id}/revert`, { method: "POST", body: { to_version: v.version }, headers: ifMatch, write: true });
          history.replaceState({}, "", `/ui/workflows/${id}`);
          await reload(data.position);
        }, out, { class: "danger revert", "data-version": v.version })
        : null)));
  const showDiff = actionButton("Show diff", async () => {
    const [a, b] = await Promise.all([pick.a, pick.b].map((v) => api(`/v1/workflows/${id}?version=${v}`).then((r) => r.data)));
    const rows = lineDiff(definitionText(a), definitionText(b));
    const changed = rows.filter((r) => r[2] !== "same").length;
    diffOut.replaceChildren(h("p", { class: "muted" }, `Version ${pick.a} ↔ version ${pick.b}: ${changed} changed lines`),
      h("table", { class: "diff", "aria-label": `Diff of versions ${pick.a} and ${pick.b}` },
        h("thead", {}, h("tr", {}, h("th", {}, `Version ${pick.a}`), h("th", {}, `Version ${pick.b}`))),
        h("tbody", {}, rows.map(([l, r, kind]) => h("tr", { class: `diff-${kind}` },
          h("td", { class: kind === "del" ? "del" : l === null ? "gap" : "" }, l ?? ""),
          h("td", { class: kind === "add" ? "add" : r === null ? "gap" : "" }, r ?? ""))))));
  }, diffOut, { id: "show-diff" });
  const asOf = h("input", { type: "text", id: "as-of", placeholder: "2026-01-30T12:00:00Z", value: params.get("as_of") || "" });
  const travelForm = h("form", { class: "toolbar" }, h("label", { for: "as-of" }, "Time travel: as of (ISO 8601)", asOf), h("button", { type: "submit" }, "Show"),
    Object.keys(travel).length ? link(`/ui/workflows/${id}`, "Back to the current version") : null);
  travelForm.addEventListener("submit", (e) => { e.preventDefault(); go(`/ui/workflows/${id}${query({ as_of: asOf.value.trim() })}`); });

  return h("section", {},
    h("h1", {}, current.name, " ", h("span", { class: "muted" }, `v${current.version}`), current.deleted ? h("span", { class: "bad" }, " (deleted)") : null),
    h("p", { class: "muted" }, [current.description, current.active ? "active" : "inactive", `${current.runs} runs`, `tags: ${current.tags.join(", ") || "none"}`].filter(Boolean).join(" · ")),
    actions, out,
    h("h2", {}, travel.version ? `Graph of version ${shown.version} (from the log)` : travel.as_of ? `Graph as of ${travel.as_of} (version ${shown.version})` : "Graph"),
    h("div", { id: "workflow-graph", "data-version": shown.version }, workflowGraph(shown.nodes, shown.connections)),
    travelForm,
    h("h2", {}, "Triggers"),
    h("p", { id: "trigger-state" }, triggers.active ? `Active since ${fmtTime(triggers.active_since)}` : "Not active: webhooks and schedules do not fire."),
    triggers.webhooks.length ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Node"), h("th", {}, "Method"), h("th", {}, "URL"), h("th", {}, "Auth"))),
      h("tbody", {}, triggers.webhooks.map((w) => h("tr", {}, h("td", {}, w.node_id), h("td", {}, w.method), h("td", {}, h("code", {}, w.url)), h("td", {}, w.auth))))) : null,
    triggers.schedules.length ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Node"), h("th", {}, "Schedule"), h("th", {}, "Next fires (UTC)"))),
      h("tbody", {}, triggers.schedules.map((t) => h("tr", {}, h("td", {}, t.node_id),
        h("td", {}, t.cron ? `cron ${t.cron} (${t.timezone})` : `every ${t.interval_s} s`), h("td", {}, t.next_fires.map(fmtTime).join(", ")))))) : null,
    !triggers.webhooks.length && !triggers.schedules.length ? h("p", { class: "muted" }, "Manual runs only.") : null,
    h("h2", {}, "Revisions"),
    h("table", { id: "revisions" }, h("thead", {}, h("tr", {}, ["From", "To", "Version", "Event", "Changed", "At", "By", ""].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, revisionRows)),
    h("div", { class: "toolbar" }, showDiff), diffOut,
    h("h2", {}, "Recent executions"),
    runs.length ? h("table", {}, h("tbody", {}, runs.map((e) => h("tr", {}, h("td", {}, link(`/ui/executions/${e.id}`, e.id)), h("td", {}, statusBadge(e.status)), h("td", {}, e.trigger), h("td", {}, fmtTime(e.created_at)), h("td", {}, fmtMs(e.duration_ms))))))
      : h("p", { class: "muted" }, "None yet."),
    link(`/ui/executions?workflow_id=${id}`, "All of its executions"));
}

async function executionsPage() {
  const params = new URLSearchParams(location.search);
  const state = { cursors: [null] };
  const status = h("select", { id: "exec-status" }, h("option", { value: "" }, "any"), STATUSES.map((st) => h("option", { value: st, selected: st === params.get("status") }, st)));
  const trigger = h("select", { id: "exec-trigger" }, h("option", { value: "" }, "any"), ["manual", "webhook", "schedule", "retry"].map((t) => h("option", { value: t, selected: t === params.get("trigger") }, t)));
  const workflow = h("input", { type: "text", id: "exec-workflow", value: params.get("workflow_id") || "", placeholder: "workflow id" });
  const filterOf = () => {
    const f = {};
    if (status.value) f.status = status.value;
    if (trigger.value) f.trigger = trigger.value;
    if (workflow.value.trim()) f.workflow_id = workflow.value.trim();
    return Object.keys(f).length ? JSON.stringify(f) : "";
  };
  const form = h("form", { class: "toolbar", role: "search" },
    h("label", { for: "exec-status" }, "Status", status), h("label", { for: "exec-trigger" }, "Trigger", trigger),
    h("label", { for: "exec-workflow" }, "Workflow", workflow), h("button", { type: "submit", class: "primary" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    history.replaceState({}, "", `/ui/executions${query({ status: status.value, trigger: trigger.value, workflow_id: workflow.value.trim() })}`);
    state.cursors = [null];
    state.redraw();
  });
  const table = await pagedTable("execution-list", async (cursor) =>
    (await api(`/v1/executions${query({ filter: filterOf(), limit: 25, cursor })}`)).data,
  [
    ["Execution", (e) => link(`/ui/executions/${e.id}`, e.id.slice(0, 8))],
    ["Workflow", (e) => link(`/ui/workflows/${e.workflow_id}`, `${e.workflow_id.slice(0, 8)} v${e.workflow_version}`)],
    ["Status", (e) => statusBadge(e.status)],
    ["Trigger", (e) => e.trigger],
    ["Queued", (e) => fmtTime(e.created_at)],
    ["Duration", (e) => fmtMs(e.duration_ms)],
    ["Nodes", (e) => `${e.node_summary.succeeded} ok, ${e.node_summary.failed} failed`],
    ["Error", (e) => e.error || ""],
  ], state);
  // Live: the first page re-reads as executions move (later pages hold still).
  follow({ types: "Execution.*" }, throttled(() => { if (state.cursors.length === 1) state.redraw(true); }, 700), 2000);
  return h("section", {}, h("h1", {}, "Executions"), form, table);
}

async function executionPage(id) {
  const { data: e } = await api(`/v1/executions/${id}`);
  const out = h("div", { id: "execution-actions-result", "aria-live": "polite" });
  const actions = h("div", { class: "toolbar" });
  if (can("workflows:execute")) {
    if (["failed", "crashed", "canceled"].includes(e.status)) {
      actions.append(actionButton("Retry", async () => {
        const { data } = await api(`/v1/executions/${id}/retry`, { method: "POST", body: {}, write: true });
        go(`/ui/executions/${data.execution_id}`);
      }, out, { class: "primary", id: "retry-execution" }));
    }
    if (["queued", "running"].includes(e.status)) {
      actions.append(actionButton("Cancel", async () => {
        if (!(await confirmAction("Cancel this execution?"))) return;
        await api(`/v1/executions/${id}/cancel`, { method: "POST", write: true });
        await refreshInPlace();
      }, out, { class: "danger", id: "cancel-execution" }));
    }
  }
  if (["queued", "running"].includes(e.status)) {
    follow({ aggregate_id: id }, throttled(() => refreshInPlace(), 300), 1000);
  }
  const json = (v) => h("pre", {}, JSON.stringify(v, null, 2));
  return h("section", {},
    h("h1", {}, "Execution ", h("code", {}, id.slice(0, 8)), " ", statusBadge(e.status)),
    h("p", {}, "Workflow ", link(`/ui/workflows/${e.workflow_id}`, e.workflow_id), ` version ${e.workflow_version} · ${e.mode} · trigger ${e.trigger} · worker ${e.worker_id || "—"}`),
    h("p", { class: "muted" }, `queued ${fmtTime(e.created_at)} · started ${fmtTime(e.started_at)} · finished ${fmtTime(e.finished_at)} · ${fmtMs(e.duration_ms)}`),
    e.error ? h("div", { class: "problem", role: "status" }, h("strong", {}, "Error"), h("p", {}, e.error)) : null,
    actions, out,
    h("h2", {}, "Retry chain"),
    h("p", { id: "retry-chain" }, e.retry_of ? ["Retry of ", link(`/ui/executions/${e.retry_of}`, e.retry_of), ". "] : "First run. ",
      e.retried_by.length ? ["Retried by ", e.retried_by.map((r, i) => [i ? ", " : "", link(`/ui/executions/${r}`, r)])] : "Not retried.",
      e.reused_nodes.length ? ` Reused nodes: ${e.reused_nodes.join(", ")}.` : ""),
    h("h2", {}, "Node timeline"),
    e.node_runs.length ? nodeTimeline(e) : h("p", { class: "muted" }, "No node has started yet."),
    h("table", { id: "node-runs" }, h("thead", {}, h("tr", {}, ["Node", "Attempt", "Status", "Started", "Duration", "Outputs / error"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, e.node_runs.map((r) => h("tr", { "data-node-id": r.node_id },
        h("td", {}, r.node_id), h("td", {}, r.attempt), h("td", {}, statusBadge(r.status)), h("td", {}, fmtTime(r.started_at)),
        h("td", {}, r.finished_at ? fmtMs(Date.parse(r.finished_at) - Date.parse(r.started_at)) : "…"),
        h("td", {}, r.error ? h("span", { class: "bad" }, r.error) : null, r.outputs !== undefined && r.outputs !== null ? h("details", {}, h("summary", {}, "outputs"), json(r.outputs)) : null))))),
    h("div", { class: "cols" },
      h("div", {}, h("h2", {}, "Input"), json(e.input)),
      h("div", {}, h("h2", {}, "Output", e.output_truncated ? " (truncated)" : ""), json(e.output))));
}

async function auditPage() {
  const params = new URLSearchParams(location.search);
  const fields = ["type", "actor", "aggregate_id", "since", "until"];
  const inputs = Object.fromEntries(fields.map((f) => [f, h("input", { type: "text", id: `audit-${f}`, value: params.get(f) || "" })]));
  const state = { cursors: [0] };
  const form = h("form", { class: "toolbar", role: "search" }, fields.map((f) => h("label", { for: `audit-${f}` }, f.replace("_", " "), inputs[f])),
    h("button", { type: "submit", class: "primary" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    history.replaceState({}, "", `/ui/audit${query(Object.fromEntries(fields.map((f) => [f, inputs[f].value.trim()])))}`);
    state.cursors = [0];
    state.redraw();
  });
  const table = await pagedTable("audit-events", async (after) =>
    (await api(`/v1/audit/events${query({ ...Object.fromEntries(fields.map((f) => [f, inputs[f].value.trim()])), after_position: after, limit: 50 })}`)).data,
  [
    ["Position", (e) => e.position], ["Type", (e) => e.type], ["Aggregate", (e) => h("code", {}, e.aggregate_id)], ["Version", (e) => e.version],
    ["Actor", (e) => e.actor], ["At", (e) => fmtTime(e.timestamp)], ["Correlation", (e) => e.correlation_id || ""],
  ], state);
  const verifyOut = h("div", { id: "audit-verify", "aria-live": "polite" });
  const verify = actionButton("Verify the audit chain", async () => {
    verifyOut.replaceChildren(h("p", { class: "muted" }, "Verifying the whole log…"));
    const { data } = await api("/v1/audit/verify");
    verifyOut.replaceChildren(h("dl", { class: "cards" },
      h("div", { class: "card" }, h("dt", {}, "Result"), h("dd", { class: data.ok ? "ok" : "bad", "data-ok": data.ok }, data.ok ? "chain holds" : `broken: ${data.problem}`)),
      h("div", { class: "card" }, h("dt", {}, "Events checked"), h("dd", {}, data.events)),
      h("div", { class: "card" }, h("dt", {}, "Not yet chained"), h("dd", {}, data.unchained ?? "—")),
      h("div", { class: "card" }, h("dt", {}, "Head position"), h("dd", {}, data.head_position ?? "—")),
      h("div", { class: "card" }, h("dt", {}, "Signed"), h("dd", {}, data.signed ? "yes (HMAC checked)" : "no key configured"))),
      data.head_link ? h("p", {}, "Head link: ", h("code", {}, data.head_link)) : null,
      data.position ? h("p", { class: "bad" }, `First break at position ${data.position}`) : null);
  }, verifyOut, { id: "verify-chain" });
  return h("section", {}, h("h1", {}, "Audit"), h("div", { class: "toolbar" }, verify), verifyOut, h("h2", {}, "Event log"), form, table);
}

async function systemPage() {
  const { data } = await api("/ui/api/system");
  const table = (id, head, rows) => h("table", { id }, h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows));
  const refresh = setInterval(() => refreshInPlace(), 5000);
  onLeave(() => clearInterval(refresh));
  return h("section", {}, h("h1", {}, "System"),
    h("p", {}, `Log head: position ${data.head ?? "unknown"}`),
    h("h2", {}, "Projections and followers"),
    table("followers", ["Follower", "Position", "Behind (events)", "Last moved (s ago)", "Dead letters"],
      data.followers.map((f) => h("tr", {}, h("td", {}, f.name), h("td", { class: "num" }, f.position), h("td", { class: "num" }, f.lag_events), h("td", { class: "num" }, f.lag_seconds), h("td", { class: "num" }, data.dead_letters[f.name] || 0)))),
    h("h2", {}, "Execution queue"),
    table("queue", ["State", "Executions"], ["queued", "running", "lease_expired"].map((st) => h("tr", {}, h("td", {}, st), h("td", { class: "num" }, data.queue[st] || 0)))),
    h("h2", {}, "Checks of this process (relay, scheduler, worker, …)"),
    table("checks", ["Check", "State"], Object.entries(data.checks).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: v === "ok" || v === "none" || v === "disabled" ? "" : "bad" }, v)))),
    h("h2", {}, "Rate limits (per API key)"),
    table("rate-limits", ["Kind", "Per second", "Burst"], [
      h("tr", {}, h("td", {}, "writes"), h("td", { class: "num" }, data.rate_limits.write_per_s), h("td", { class: "num" }, data.rate_limits.write_burst)),
      h("tr", {}, h("td", {}, "reads"), h("td", { class: "num" }, data.rate_limits.read_per_s), h("td", { class: "num" }, data.rate_limits.read_burst)),
    ]),
    data.rate_limits.enabled ? null : h("p", { class: "muted" }, "Rate limiting is off (no Redis)."));
}

// -- start -----------------------------------------------------------------------------
if (sessionStorage.getItem(KEY_SLOT)) startSession();
else showSignIn();
