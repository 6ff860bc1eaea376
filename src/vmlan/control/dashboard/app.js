// vmlan's dashboard: the daemon's HTTP+JSON API in a page. Vanilla JavaScript, no build step.
//
// Every value from the API reaches the DOM through textContent or an attribute set with setAttribute
// (a guest chooses its own DHCP hostname: it must never become markup). Every API call goes through
// api() with a literal method and path template; tests/control/test_dashboard.py checks each one
// against the daemon's OpenAPI document.
"use strict";

const EVENT_KINDS = ["guest-connected", "guest-left", "guest-attached", "lease-granted", "lease-expired",
  "link-up", "link-down", "network-started", "network-stopped"];
const MAX_EVENTS = 300;
const POLL_MS = 5000;

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

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// One API call; the error is the API's {"detail": ...} (a string, or FastAPI's list of problems).
async function api(method, path, body) {
  const init = {method: method, headers: {Accept: "application/json"}, credentials: "same-origin"};
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

function watchEvents() {
  const badge = $("stream");
  const source = new EventSource("/events");
  source.addEventListener("open", () => {
    badge.textContent = "events: live";
    badge.className = "badge up";
  });
  source.addEventListener("error", () => {
    badge.textContent = "events: reconnecting";
    badge.className = "badge down";
  });
  for (const kind of EVENT_KINDS) {
    source.addEventListener(kind, (ev) => {
      let data = {};
      try {
        data = JSON.parse(ev.data);
      } catch (err) {
        data = {raw: String(ev.data)};
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
    });
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
