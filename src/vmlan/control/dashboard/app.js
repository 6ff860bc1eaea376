// vmlan's dashboard: the daemon's HTTP+JSON API in a page. Vanilla JavaScript, no build step.
//
// Every value from the API reaches the DOM through textContent or an attribute set with setAttribute
// (a guest chooses its own DHCP hostname: it must never become markup). Every API call goes through
// api() with a literal method and path template; tests/control/test_dashboard.py checks each one
// against the daemon's OpenAPI document.
//
// The token: `vmlan dashboard` prints http://127.0.0.1:PORT/#token=...; the fragment never leaves the
// browser. It is moved to sessionStorage (per origin, so per port, unlike a cookie) and out of the address
// bar, and every request carries it in the X-Vmlan-Token header, which no other origin may send here.
"use strict";

const EVENT_KINDS = ["guest-connected", "guest-left", "guest-attached", "lease-granted", "lease-expired",
  "link-up", "link-down", "network-started", "network-stopped"];
const MAX_EVENTS = 300;
const POLL_MS = 5000;
const RETRY_MS = 3000;
const TOKEN_KEY = "vmlan-dashboard-token";

// The token from the fragment (then removed from the address bar and history), else the one kept from
// an earlier load of this tab; null when the page was opened without it.
function takeToken() {
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (given !== null) {
    history.replaceState(null, "", location.pathname + location.search);
  }
  try {
    if (given) {
      sessionStorage.setItem(TOKEN_KEY, given);
    }
    return sessionStorage.getItem(TOKEN_KEY) || given || null;
  } catch (err) {
    return given || null;  // storage refused: this load only
  }
}

const TOKEN = takeToken();

let selected = null;      // the network whose panels are shown
let networks = [];        // the last GET /networks

// -- helpers --------------------------------------------------------------------------------------

function $(id) {
  return document.getElementById(id);
}

function seg(value) {
  return encodeURIComponent(value);
}

// el("td", {class: "num"}, "text", child, ...): strings become text nodes, never markup.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) {
      node.setAttribute(key, String(value));
    }
  }
  for (const child of children) {
    if (child === null || child === undefined) {
      continue;
    }
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function button(label, onClick) {
  const b = el("button", {type: "button"}, label);
  b.addEventListener("click", onClick);
  return b;
}

function fill(tbody, rows, columns, empty) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    tbody.appendChild(el("tr", {}, el("td", {colspan: columns, class: "muted"}, empty)));
    return;
  }
  for (const cells of rows) {
    tbody.appendChild(el("tr", {}, ...cells.map((c) => (c instanceof Node && c.tagName === "TD") ? c : el("td", {}, c))));
  }
}

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function panelOf(id) {
  return $(id).closest(".panel");
}

function panelError(id, message) {
  const p = panelOf(id).querySelector(".panel-error");
  p.textContent = message || "";
  p.hidden = !message;
}

function when(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}

function authHeaders(accept) {
  return {"Accept": accept, "X-Vmlan-Token": TOKEN};
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// One API call; the error is the API's {"detail": ...} (a string, or FastAPI's list of problems).
async function api(method, path, body) {
  const init = {method: method, headers: authHeaders("application/json"), credentials: "omit", cache: "no-store"};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, `${method} ${path}: the daemon did not answer (${err.message})`);
  }
  const text = await response.text();
  let payload = null;
  try {
    payload = text ? JSON.parse(text) : null;
  } catch (err) {
    payload = null;
  }
  if (!response.ok) {
    let detail = payload && payload.detail !== undefined ? payload.detail : `HTTP ${response.status}`;
    if (typeof detail !== "string") {
      detail = JSON.stringify(detail);
    }
    throw new ApiError(response.status, detail);
  }
  return payload;
}

// Run an action; its error goes to the banner, then everything is shown afresh.
async function act(action) {
  try {
    await action();
  } catch (err) {
    showError(err.message);
  }
  await refreshAll();
}

// -- networks -------------------------------------------------------------------------------------

async function refreshNetworks() {
  try {
    networks = await api("GET", "/networks");
  } catch (err) {
    showError(err.message);
    return;
  }
  const tbody = $("networks").querySelector("tbody");
  const rows = networks.map((n) => {
    const link = el("a", {class: "net", role: "button", tabindex: 0}, n.name);
    link.addEventListener("click", () => select(n.name));
    const state = el("td", {class: n.active ? "state-active" : "state-inactive"}, n.active ? "active" : "inactive");
    const actions = el("td", {},
      n.active
        ? button("Stop", () => act(() => api("POST", `/networks/${seg(n.name)}/destroy`)))
        : button("Start", () => act(() => api("POST", `/networks/${seg(n.name)}/start`))),
      " ",
      button(n.autostart ? "Autostart off" : "Autostart on",
        () => act(() => api("PUT", `/networks/${seg(n.name)}/autostart`, {autostart: !n.autostart}))));
    return [el("td", {}, link), state, n.autostart ? "yes" : "no", n.persistent ? "yes" : "no",
      n.backend || n.mode, n.bridge || "-", (n.addresses || []).join(", ") || "-", actions];
  });
  fill(tbody, rows, 8, "no networks defined");
  for (const [i, n] of networks.entries()) {
    if (n.name === selected) {
      tbody.rows[i].classList.add("selected");
    }
  }
  if (selected !== null && !networks.some((n) => n.name === selected)) {
    selected = null;
    $("detail").hidden = true;
  }
}

function select(name) {
  selected = name;
  $("detail-name").textContent = name;
  $("detail").hidden = false;
  refreshAll();
}

// -- one network's panels ---------------------------------------------------------------------------

// Each panel loads on its own: an inactive network has leases and forwards but no switch or counters,
// and that panel shows the API's message instead.
async function panel(id, load) {
  try {
    await load();
    panelError(id, null);
  } catch (err) {
    panelError(id, err.message);
    // nothing stale under the message
    for (const node of panelOf(id).querySelectorAll("tbody, dl, pre")) {
      node.replaceChildren();
    }
  }
}

async function refreshLeases(name) {
  const leases = await api("GET", `/networks/${seg(name)}/leases`);
  fill($("leases").querySelector("tbody"), leases.map((l) => [when(l.expiry_time), l.mac, l.protocol,
    `${l.ip}/${l.prefix}`, l.hostname || "-", l.client_id || "-"]), 6, "no leases");
}

async function refreshForwards(name) {
  const forwards = await api("GET", `/networks/${seg(name)}/forwards`);
  fill($("forwards").querySelector("tbody"), forwards.map((f) => [f.proto, f.host_addr || "*",
    String(f.bound_port || f.host_port), f.guest_addr, String(f.guest_port),
    el("td", {}, button("Remove", () => act(() => api("DELETE",
      `/networks/${seg(name)}/forwards/${seg(f.proto)}/${f.host_port || f.bound_port}?host_addr=${seg(f.host_addr)}`))))]),
  6, "no forwards");
}

async function refreshDns(name) {
  const table = await api("GET", `/networks/${seg(name)}/dns`);
  const rows = [];
  for (const [host, ips] of Object.entries(table.records)) {
    for (const ip of ips) {
      rows.push([host, ip, el("td", {}, button("Remove", () => act(() => api("DELETE",
        `/networks/${seg(name)}/dns/${seg(host)}?ip=${seg(ip)}`))))]);
    }
  }
  fill($("dns").querySelector("tbody"), rows, 3, "no static names");
}

async function refreshMacTable(name) {
  const entries = await api("GET", `/networks/${seg(name)}/mac-table`);
  fill($("mac-table").querySelector("tbody"), entries.map((e) => [e.mac, String(e.port),
    el("td", {class: "num"}, Number(e.age).toFixed(0))]), 3, "nothing learned");
}

function counterText(counters) {
  if (!counters || typeof counters !== "object") {
    return "-";
  }
  return Object.entries(counters).filter(([, v]) => v !== 0).map(([k, v]) => `${k}=${v}`).join(" ") || "0";
}

async function refreshStatus(name) {
  const status = await api("GET", `/networks/${seg(name)}/status`);
  const summary = $("status-summary");
  summary.replaceChildren();
  for (const [key, value] of Object.entries(status)) {
    if (key === "ports" || key === "taps") {
      continue;
    }
    const shown = value !== null && typeof value === "object" ? JSON.stringify(value) : String(value);
    summary.append(el("dt", {}, key), el("dd", {}, shown));
  }
  const ports = Array.isArray(status.ports) ? status.ports : [];
  fill($("ports").querySelector("tbody"), ports.map((p) => [p.name, p.mac || "-",
    el("td", {}, el("span", {class: p.link_up ? "badge up" : "badge down"}, p.link_up ? "up" : "down")),
    counterText(p.counters)]), 4, "no ports");
}

async function refreshUsernet(name) {
  const info = await api("GET", `/networks/${seg(name)}/usernet`);
  $("usernet").textContent = JSON.stringify(info, null, 2);
}

async function refreshDetail() {
  const name = selected;
  if (name === null) {
    return;
  }
  await Promise.all([
    panel("leases", () => refreshLeases(name)),
    panel("forwards", () => refreshForwards(name)),
    panel("dns", () => refreshDns(name)),
    panel("mac-table", () => refreshMacTable(name)),
    panel("ports", () => refreshStatus(name)),
    panel("usernet", () => refreshUsernet(name)),
  ]);
}

async function refreshAll() {
  await refreshNetworks();
  await refreshDetail();
}

function formValues(form) {
  const values = {};
  for (const [key, value] of new FormData(form).entries()) {
    values[key] = String(value).trim();
  }
  return values;
}

function port(text, what) {
  if (!/^[0-9]{1,5}$/.test(text)) {
    throw new Error(`${what}: expects a port number (got '${text}')`);
  }
  return Number(text);
}

function wireForms() {
  $("forward-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = formValues(ev.target);
    const name = selected;
    act(async () => {
      await api("POST", `/networks/${seg(name)}/forwards`, {proto: v.proto, host_addr: v.host_addr,
        host_port: port(v.host_port, "host port"), guest_addr: v.guest_addr,
        guest_port: port(v.guest_port, "guest port")});
      ev.target.reset();
    });
  });
  $("dns-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = formValues(ev.target);
    const name = selected;
    act(async () => {
      await api("POST", `/networks/${seg(name)}/dns`, {name: v.name, ip: v.ip});
      ev.target.reset();
    });
  });
}

// -- events -----------------------------------------------------------------------------------------

function logEvent(kind, data) {
  const list = $("events");
  const time = typeof data.time === "number" ? new Date(data.time * 1000).toLocaleTimeString() : "";
  const rest = Object.assign({}, data);
  delete rest.time;
  list.prepend(el("li", {}, el("span", {class: "muted"}, time), el("span", {class: "kind"}, kind),
    JSON.stringify(rest)));
  while (list.children.length > MAX_EVENTS) {
    list.lastElementChild.remove();
  }
}

// Server-sent events framing: "field: value" lines, an event ends at a blank line, ":" starts a comment.
// EventSource cannot send a header, so the stream is read with fetch.
class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.kind = "";
    this.data = [];
  }

  push(text) {
    this.buffer += text;
    let end;
    while ((end = this.buffer.indexOf("\n")) >= 0) {
      let line = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 1);
      if (line.endsWith("\r")) {
        line = line.slice(0, -1);
      }
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      if (this.data.length > 0) {
        this.onEvent(this.kind || "message", this.data.join("\n"));
      }
      this.kind = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) {
      return;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) {
      value = value.slice(1);
    }
    if (field === "event") {
      this.kind = value;
    } else if (field === "data") {
      this.data.push(value);
    }
  }
}

function onEvent(kind, raw) {
  if (!EVENT_KINDS.includes(kind)) {
    return;
  }
  let data = {};
  try {
    data = JSON.parse(raw);
  } catch (err) {
    data = {raw: String(raw)};
  }
  logEvent(kind, data);
  // the network list changes with start/stop; the selected network's panels with everything else
  // (link events carry no network: refresh whatever is shown)
  if (kind.startsWith("network-")) {
    refreshNetworks();
  }
  if (selected !== null && (data.network === selected || data.network === null || data.network === undefined)) {
    refreshDetail();
  }
}

function streamBadge(text, state) {
  const badge = $("stream");
  badge.textContent = text;
  badge.className = state ? `badge ${state}` : "badge";
}

// One subscription, until the daemon closes it or it fails.
async function readEvents(onOpen) {
  const response = await fetch("/events", {headers: authHeaders("text/event-stream"), credentials: "omit", cache: "no-store"});
  if (!response.ok || response.body === null) {
    let detail = `HTTP ${response.status}`;
    try {
      const payload = await response.json();
      if (payload && typeof payload.detail === "string") {
        detail = payload.detail;
      }
    } catch (err) {
      // not JSON: the status says it
    }
    throw new ApiError(response.status, `GET /events: ${detail}`);
  }
  onOpen();
  const parser = new SseParser(onEvent);
  const decoder = new TextDecoder();
  const reader = response.body.getReader();
  for (;;) {
    const {value, done} = await reader.read();
    if (done) {
      return;
    }
    parser.push(decoder.decode(value, {stream: true}));
  }
}

async function watchEvents() {
  let connected = false;
  for (;;) {
    try {
      await readEvents(() => {
        streamBadge("events: live", "up");
        if (connected) {
          refreshAll();  // events may have been missed while away
        }
        connected = true;
      });
      streamBadge("events: reconnecting", "down");
    } catch (err) {
      streamBadge(err.status === 403 ? "events: refused" : "events: reconnecting", "down");
      if (err.status === 403) {
        showError(err.message);
      }
    }
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
  }
}

// -- start ------------------------------------------------------------------------------------------

async function showVersion() {
  try {
    const v = await api("GET", "/version");
    $("version").textContent = `${v.version} (daemon uid ${v.uid})`;
  } catch (err) {
    showError(err.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("error-close").addEventListener("click", () => {
    $("error").hidden = true;
  });
  if (TOKEN === null) {
    // nothing to ask the API without the token: say where it is and stop
    $("no-token").hidden = false;
    $("app").hidden = true;
    streamBadge("events: no token", "down");
    return;
  }
  $("refresh").addEventListener("click", () => refreshAll());
  wireForms();
  showVersion();
  refreshAll().then(() => {
    if (selected === null && networks.length > 0) {
      select((networks.find((n) => n.active) || networks[0]).name);
    }
  });
  watchEvents();
  setInterval(refreshDetail, POLL_MS);
});
