// memchat web page: threads sidebar, streamed chat, memory inspector.
// Plain DOM code; all user/server text is set with textContent (never innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);
const LS = {
  key: "memchat.apiKey",
  user: "memchat.userId",
  thread: "memchat.thread",
  system: "memchat.systemPrompt",
  sentSystem: "memchat.sentSystem", // JSON map thread -> last system prompt sent
  jsonMode: "memchat.jsonMode",
};

const state = {
  thread: null,       // selected thread id
  threads: [],        // from GET /v1/threads
  controller: null,   // AbortController of the running stream
};

// ---------- small DOM helpers ----------

// el("div", {class: "x"}, "text", childNode, ...) — strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node, ...children) {
  node.replaceChildren(...children);
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());
const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");
const asText = (v) => (typeof v === "string" ? v : JSON.stringify(v));

// ---------- banner ----------

function showBanner(text, kind) {
  $("error-text").textContent = text;
  $("error-banner").className = "banner " + (kind || "");
  $("error-banner").hidden = false;
}

function hideBanner(kind) {
  const b = $("error-banner");
  if (!kind || b.classList.contains(kind)) b.hidden = true;
}

// ---------- API ----------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra) {
  const h = { "Content-Type": "application/json", ...(extra || {}) };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// Turn a non-OK response into an ApiError (and show the auth banner on 401).
async function failure(res) {
  let message = res.status + " " + res.statusText;
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) message = body.error.message;
    else if (body && body.detail) message = asText(body.detail);
  } catch (_) { /* not JSON */ }
  if (res.status === 401) {
    showBanner("Unauthorized (401): sign in again (reload the page) or enter a valid API key in the sidebar. " +
      "Server said: " + message, "auth");
  }
  return new ApiError(res.status, message);
}

// JSON request; throws ApiError on non-2xx.
async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: headers(),
    credentials: "same-origin", // the HttpOnly session cookie from /login
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw await failure(res);
  hideBanner("auth");
  return res.status === 204 ? null : res.json();
}

// Show an error unless it is a 401 (that has its own banner).
function report(err) {
  if (err && err.status === 401) return;
  showBanner(String((err && err.message) || err), "error");
}

// ---------- threads ----------

function newThreadId() {
  const rnd = Array.from(crypto.getRandomValues(new Uint8Array(5)))
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  return "web-" + rnd;
}

async function loadThreads() {
  try {
    const res = await api("GET", "/v1/threads");
    state.threads = (res && res.data) || [];
  } catch (err) {
    report(err);
  }
  renderThreads();
}

function renderThreads() {
  const list = $("thread-list");
  const items = state.threads.slice();
  // The selected thread may be new (not on the server yet): show it anyway.
  if (state.thread && !items.some((t) => t.id === state.thread)) {
    items.unshift({ id: state.thread, turns: 0, isNew: true });
  }
  clear(list, ...items.map((t) => el("li", {
    class: "thread" + (t.id === state.thread ? " active" : ""),
    "data-thread-id": t.id,
    title: t.user_id ? "user: " + t.user_id : "",
    onclick: () => selectThread(t.id),
  },
  el("span", { class: "thread-id" }, t.id),
  el("span", { class: "thread-turns" }, t.isNew ? "new" : plural(t.turns || 0, "turn")))));
  if (!items.length) list.append(el("li", { class: "empty" }, "No threads yet."));
}

async function selectThread(id) {
  if (state.controller) state.controller.abort();
  state.thread = id;
  localStorage.setItem(LS.thread, id);
  $("current-thread").textContent = id;
  renderThreads();
  clear($("chat"));
  clearInspector();
  try {
    const mem = await api("GET", "/v1/threads/" + encodeURIComponent(id) + "/memory");
    if (state.thread !== id) return; // user switched meanwhile
    for (const t of mem.recent_turns || []) {
      addMessage("user", t.user);
      addMessage("assistant", t.assistant).classList.add("done");
    }
    renderMemory(mem);
    await refreshContext();
  } catch (err) {
    if (err.status !== 404) report(err); // 404 = thread unknown yet: empty view
  }
}

function startNewThread() {
  selectThread(newThreadId());
  $("message").focus();
}

// ---------- chat ----------

function addMessage(role, text) {
  const div = el("div", { class: "msg " + role },
    el("div", { class: "role" }, role === "user" ? "You" : "Assistant"),
    el("div", { class: "content" }, text || ""));
  $("chat").append(div);
  scrollChat(true);
  return div;
}

// Keep the transcript pinned to the bottom unless the user scrolled up.
function scrollChat(force) {
  const c = $("chat");
  if (force || c.scrollHeight - c.scrollTop - c.clientHeight < 120) c.scrollTop = c.scrollHeight;
}

function sentSystemMap() {
  try { return JSON.parse(localStorage.getItem(LS.sentSystem)) || {}; } catch (_) { return {}; }
}

function setStreaming(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  document.body.classList.toggle("streaming", on);
}

// Read an SSE body and call onData(dataString) per event.
async function readSSE(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  let data = [];
  const flush = () => {
    if (data.length) onData(data.join("\n"));
    data = [];
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, "");
        buf = buf.slice(nl + 1);
        if (line === "") flush();                      // blank line ends an event
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        // comments (":") and other fields are ignored
      }
    }
    if (buf.startsWith("data:")) data.push(buf.slice(5).replace(/^ /, ""));
    flush();
  } catch (err) {
    reader.cancel().catch(() => {});
    throw err;
  }
}

async function send() {
  const input = $("message");
  const text = input.value.trim();
  if (!text || state.controller) return;
  if (!state.thread) await selectThread(newThreadId());
  const thread = state.thread;

  // Server keeps the memory: send only the new message (+ changed system prompt).
  const messages = [];
  const system = $("system-prompt").value.trim();
  const sent = sentSystemMap();
  if (system && sent[thread] !== system) messages.push({ role: "system", content: system });
  messages.push({ role: "user", content: text });

  const jsonMode = $("json-mode").checked;
  const body = {
    model: "memchat",
    messages,
    stream: true,
    stream_options: { include_usage: true },
  };
  if (jsonMode) body.response_format = { type: "json_object" };
  const user = $("user-id").value.trim();
  if (user) body.user = user;

  input.value = "";
  addMessage("user", text);
  const msg = addMessage("assistant", "");
  const content = msg.querySelector(".content");
  msg.classList.add("pending");
  let reply = "";
  let usage = null;

  state.controller = new AbortController();
  setStreaming(true);
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "X-Thread-ID": thread, Accept: "text/event-stream" }),
      credentials: "same-origin",
      body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    if (!res.ok) throw await failure(res);
    hideBanner("auth");
    if (messages[0].role === "system") {
      sent[thread] = system;
      localStorage.setItem(LS.sentSystem, JSON.stringify(sent));
    }
    await readSSE(res.body, (data) => {
      if (data === "[DONE]") return;
      let chunk;
      try { chunk = JSON.parse(data); } catch (_) { return; }
      if (chunk.error) throw new ApiError(0, chunk.error.message || asText(chunk.error));
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        msg.classList.remove("pending");
        reply += delta.content;
        content.textContent = reply;
        scrollChat(false);
      }
      if (chunk.usage) usage = chunk.usage;
    });
    if (jsonMode) prettyJson(msg, content, reply);
  } catch (err) {
    if (err.name === "AbortError") {
      msg.classList.add("stopped");
      msg.append(el("div", { class: "note" }, "Stopped."));
    } else {
      msg.classList.add("error");
      msg.append(el("div", { class: "note" }, "Error: " + err.message));
      report(err);
    }
  } finally {
    msg.classList.remove("pending");
    if (usage) msg.append(usageLine(usage));
    msg.classList.add("done");
    state.controller = null;
    setStreaming(false);
    scrollChat(false);
  }
  if (state.thread === thread) refreshInspector();
  loadThreads();
}

function prettyJson(msg, content, text) {
  try {
    content.textContent = JSON.stringify(JSON.parse(text), null, 2);
    msg.classList.add("json");
  } catch (_) { /* not JSON: leave as is */ }
}

function usageLine(u) {
  const cached = u.prompt_tokens_details && u.prompt_tokens_details.cached_tokens;
  const parts = [
    "prompt " + fmt(u.prompt_tokens),
    "completion " + fmt(u.completion_tokens),
  ];
  if (cached !== undefined && cached !== null) parts.push("cached " + fmt(cached));
  if (u.total_tokens !== undefined) parts.push("total " + fmt(u.total_tokens));
  return el("div", { class: "usage" }, parts.join(" · "));
}

// ---------- memory inspector ----------

function clearInspector() {
  renderMemory({});
  renderContext(null);
}

async function refreshInspector() {
  const id = state.thread;
  if (!id) return;
  try {
    const mem = await api("GET", "/v1/threads/" + encodeURIComponent(id) + "/memory");
    if (state.thread === id) renderMemory(mem);
  } catch (err) {
    if (err.status !== 404) report(err);
  }
  await refreshContext();
}

async function refreshContext() {
  const id = state.thread;
  try {
    const ctx = await api("GET", "/v1/threads/" + encodeURIComponent(id) + "/context");
    if (state.thread === id) renderContext(ctx);
  } catch (err) {
    if (err.status !== 404) report(err);
  }
}

function renderMemory(mem) {
  $("mem-turns").textContent = mem.turns !== undefined ? plural(mem.turns, "turn") : "";

  // Slots table
  const slots = mem.slots || [];
  if (!slots.length) {
    clear($("slots"), el("p", { class: "empty" }, "No slots."));
  } else {
    const rows = slots.map((s) => el("tr", {
      title: [s.source && "source: " + s.source, s.time && "time: " + s.time,
        s.expires_turn != null && "expires at turn " + s.expires_turn].filter(Boolean).join("\n"),
    },
    el("td", { class: "kind" }, el("span", { class: "tag" }, s.kind || "")),
    el("td", { class: "key" }, s.key || ""),
    el("td", { class: "value" }, asText(s.value) + (s.origin ? " (" + s.origin + ")" : "")),
    el("td", { class: "num" }, s.turn ?? "")));
    clear($("slots"), el("table", { class: "slots" },
      el("thead", {}, el("tr", {}, ["kind", "key", "value", "turn"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
  }
  // Slot changes (newest last): corrections, retractions, completions, forget requests
  const changes = (mem.slot_history || []).filter((e) => e.action !== "set");
  if (changes.length) {
    $("slots").appendChild(el("ul", { class: "slot-history" }, ...changes.map((e) => el("li", {
      title: e.why || "",
    }, "turn " + e.turn + " · " + e.action + " · " + e.key + ": " + asText(e.old ?? "") +
      (e.new != null ? " → " + asText(e.new) : "")))));
  }

  // L1 summaries
  const l1 = mem.l1 || [];
  clear($("l1"), ...(l1.length ? l1.map((s) => el("li", {},
    el("span", { class: "range" }, "turns " + s.from_turn + "–" + s.to_turn),
    el("div", {}, s.text || ""))) : [el("li", { class: "empty" }, "No L1 summaries yet.")]));

  // L2
  $("l2").textContent = mem.l2 ? JSON.stringify(mem.l2, null, 2) : "null";
  $("l2").classList.toggle("empty", !mem.l2);

  // Retrieved
  const ret = mem.retrieved || [];
  clear($("retrieved"), ...(ret.length ? ret.map((r) => el("li", {},
    el("div", { class: "meta" },
      el("span", { class: "score" }, typeof r.score === "number" ? r.score.toFixed(3) : asText(r.score)),
      r.kind && el("span", { class: "tag" }, r.kind),
      r.turn != null && el("span", { class: "muted" }, "turn " + r.turn),
      r.date && el("span", { class: "muted" }, r.date)),
    el("div", {}, r.text || ""))) : [el("li", { class: "empty" }, "Nothing retrieved.")]));
}

const SECTION_NAMES = ["head", "middle", "memory", "tail"];

function renderContext(ctx) {
  const box = $("sections");
  const msgs = $("prompt-messages");
  if (!ctx || !ctx.sections) {
    clear(box, el("p", { class: "empty" }, "No prompt yet."));
    clear(msgs);
    return;
  }
  const s = ctx.sections;
  const total = s.total || SECTION_NAMES.reduce((a, k) => a + (s[k] || 0), 0);
  const rows = SECTION_NAMES.map((k) => {
    const pct = total ? Math.min(100, (100 * (s[k] || 0)) / total) : 0;
    return el("div", { class: "sec-row", "data-section": k },
      el("span", { class: "sec-name" }, k),
      el("span", { class: "bar" }, el("span", { class: "fill " + k, style: "width:" + pct.toFixed(1) + "%" })),
      el("span", { class: "num" }, fmt(s[k] || 0)));
  });
  rows.push(el("div", { class: "sec-row total", "data-section": "total" },
    el("span", { class: "sec-name" }, "total"), el("span"), el("span", { class: "num" }, fmt(total))));
  const reuse = ctx.prefix_reuse == null ? "–" : (100 * ctx.prefix_reuse).toFixed(1) + "%";
  rows.push(el("div", { class: "sec-extra" },
    el("span", {}, "cached tokens: ", el("b", { class: "cached" }, fmt(ctx.cached_tokens))),
    el("span", {}, "prefix reuse: ", el("b", { class: "reuse" }, reuse))));
  clear(box, ...rows);

  // The raw prompt, collapsed by default.
  clear(msgs, ...(ctx.messages || []).map((m) => el("div", { class: "pmsg " + (m.role || "") },
    el("div", { class: "role" }, m.role || ""),
    el("pre", {}, asText(m.content)))));
  $("prompt-box").querySelector("summary").textContent =
    "Last prompt sent (" + (ctx.messages || []).length + " messages)";
}

async function summarize() {
  if (!state.thread) return;
  const btn = $("summarize");
  btn.disabled = true;
  try {
    const mem = await api("POST", "/v1/threads/" + encodeURIComponent(state.thread) + "/summarize");
    renderMemory(mem || {});
  } catch (err) {
    report(err);
  } finally {
    btn.disabled = false;
  }
}

async function forget() {
  const id = state.thread;
  if (!id) return;
  try {
    await api("DELETE", "/v1/threads/" + encodeURIComponent(id));
    const sent = sentSystemMap();
    delete sent[id];
    localStorage.setItem(LS.sentSystem, JSON.stringify(sent));
    state.threads = state.threads.filter((t) => t.id !== id);
    await selectThread(newThreadId());
    loadThreads();
  } catch (err) {
    report(err);
  }
}

// ---------- session ----------

// Drop the session cookie (and the stored key), then show the login form.
async function signOut() {
  $("api-key").value = "";
  localStorage.removeItem(LS.key);
  try {
    await fetch("/logout", { method: "POST", credentials: "same-origin" });
  } catch (_) { /* offline: the reload shows the state anyway */ }
  window.location.assign("/");
}

// ---------- wiring ----------

function persist(id, key, prop) {
  const save = () => localStorage.setItem(key, String($(id)[prop]));
  $(id).addEventListener("input", save);
  $(id).addEventListener("change", save);
}

function init() {
  $("api-key").value = localStorage.getItem(LS.key) || "";
  $("user-id").value = localStorage.getItem(LS.user) || "";
  $("system-prompt").value = localStorage.getItem(LS.system) || "";
  $("json-mode").checked = localStorage.getItem(LS.jsonMode) === "true";
  persist("user-id", LS.user, "value");
  persist("system-prompt", LS.system, "value");
  persist("json-mode", LS.jsonMode, "checked");

  // A new key: store it; once edited, drop the auth banner and retry.
  $("api-key").addEventListener("input", () => localStorage.setItem(LS.key, $("api-key").value.trim()));
  $("api-key").addEventListener("change", () => {
    hideBanner("auth");
    loadThreads();
    if (state.thread) refreshInspector();
  });

  $("error-close").addEventListener("click", () => hideBanner());
  $("sign-out").addEventListener("click", signOut);
  $("new-thread").addEventListener("click", startNewThread);
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("summarize").addEventListener("click", summarize);
  $("forget").addEventListener("click", forget);

  setStreaming(false);
  selectThread(localStorage.getItem(LS.thread) || newThreadId());
  loadThreads();
}

document.addEventListener("DOMContentLoaded", init);
