// priv_network web app: progressive enhancement over server-rendered pages.
// No inline scripts (the CSP forbids them); every text from users or peers is
// inserted with textContent, never as HTML.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf"]').content;

async function api(method, url, body) {
  const init = { method, headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" };
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const response = await fetch(url, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const message = data && data.error ? data.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function size(n) {
  let value = Number(n || 0);
  for (const unit of ["B", "KiB", "MiB", "GiB", "TiB"]) {
    if (value < 1024 || unit === "TiB") return unit === "B" ? `${value} B` : `${value.toFixed(1)} ${unit}`;
    value /= 1024;
  }
  return `${n} B`;
}

function duration(seconds) {
  if (!seconds) return "";
  const t = Math.round(seconds), h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), s = t % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(s).padStart(2, "0")}` : `${m}:${String(s).padStart(2, "0")}`;
}

function say(outputId, text, bad) {
  const out = document.getElementById(outputId);
  if (!out) return;
  out.textContent = text;
  out.className = bad ? "error" : "ok";
}

// -- search: results as you type ----------------------------------------------
function card(hit) {
  const link = el("a", { href: `/items/${hit.id}` },
    hit.poster_url ? el("img", { src: hit.poster_url, alt: `Poster of ${hit.title}`, loading: "lazy", width: "320", height: "180" })
                   : el("span", { class: "noposter", "aria-hidden": "true", text: hit.kind }),
    el("span", { class: "title", text: hit.title }));
  const bits = [hit.kind, duration(hit.duration), hit.year, hit.node_name].filter(Boolean).join(" · ");
  const meta = el("span", { class: "meta", text: bits });
  if (!hit.online) meta.append(" ", el("span", { class: "badge offline", text: "offline" }));
  return el("li", { class: hit.online ? "card" : "card is-offline" }, link, meta);
}

function initSearch() {
  const form = document.getElementById("search-form");
  if (!form) return;
  const results = document.getElementById("results");
  const summary = document.getElementById("summary");
  let timer = null, seq = 0;
  const run = async () => {
    const params = new URLSearchParams(new FormData(form));
    const mine = ++seq;
    const api_params = new URLSearchParams();
    for (const [k, v] of params) if (v) api_params.set(k === "owner" ? "node" : k, v);
    api_params.set("limit", "100");
    try {
      const data = await api("GET", `/api/v1/search?${api_params}`);
      if (mine !== seq) return;
      results.replaceChildren(...data.results.map(card));
      const q = params.get("q");
      summary.textContent = `${data.results.length} result${data.results.length === 1 ? "" : "s"}${q ? ` for “${q}”` : ""}`;
      history.replaceState(null, "", `/search?${params}`);
    } catch (e) { summary.textContent = e.message; }
  };
  form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(run, 150); });
  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
}

// -- item page: progress, comments, pin, visibility, share ----------------------
function initItem() {
  const article = document.querySelector("article.item");
  if (!article) return;
  const id = article.dataset.item;
  const player = document.getElementById("player");
  if (player) {
    let last = 0;
    const report = (force) => {
      const now = Date.now();
      if (!force && now - last < 10000) return;
      last = now;
      api("POST", `/api/v1/items/${id}/progress`, { position: player.currentTime })
        .then((r) => { if (r.view_counted) { const v = document.getElementById("views"); v.textContent = String(Number(v.textContent) + 1); } })
        .catch(() => {});
    };
    player.addEventListener("timeupdate", () => report(false));
    player.addEventListener("pause", () => report(true));
    player.addEventListener("ended", () => report(true));
  }
  for (const button of document.querySelectorAll("[data-reply]")) {
    button.addEventListener("click", () => {
      document.getElementById("parent_id").value = button.dataset.reply;
      const who = button.closest("li").querySelector(".by strong").textContent;
      document.getElementById("replying").textContent = `(replying to ${who})`;
      document.getElementById("body").focus();
    });
  }
  for (const button of document.querySelectorAll("[data-action]")) {
    button.addEventListener("click", async () => {
      try {
        if (button.dataset.action === "pin") {
          const pin = await api("POST", "/api/v1/pins", { id });
          const state = pin ? pin.state : "";
          say("action-result", state === "waiting" ? `Queued: ${pin.error}` : state === "complete" ? "Pinned." : "Pinning started.");
        }
        if (button.dataset.action === "unpin") { await api("DELETE", `/api/v1/pins/${id}`); say("action-result", "Unpinned."); }
        if (button.dataset.action === "share") {
          const share = await api("POST", "/api/v1/shares", { id, ttl: "24h" });
          say("action-result", `Share link (24 h): ${share.url}`);
        }
      } catch (e) { say("action-result", e.message, true); }
    });
  }
  const vis = document.getElementById("visibility-form");
  if (vis) vis.addEventListener("submit", async (event) => {
    event.preventDefault();
    try { const item = await api("PATCH", `/api/v1/items/${id}`, { visibility: vis.visibility.value }); say("action-result", `Visibility: ${item.visibility}`); }
    catch (e) { say("action-result", e.message, true); }
  });
}

// -- uploads over tus 1.0, resumable across reloads --------------------------------
const CHUNK = 8 * 1024 * 1024;

function b64(text) { return btoa(unescape(encodeURIComponent(text))); }

class TusUpload {
  constructor(file, visibility, row) {
    this.file = file; this.visibility = visibility; this.row = row; this.paused = false;
    this.key = `tus:${file.name}:${file.size}:${file.lastModified}`;
  }
  tusHeaders(extra) { return Object.assign({ "Tus-Resumable": "1.0.0", "X-CSRF-Token": csrf() }, extra); }
  async start() {
    let url = localStorage.getItem(this.key), offset = 0;
    if (url) {
      const head = await fetch(url, { method: "HEAD", headers: this.tusHeaders() });
      if (head.ok) offset = Number(head.headers.get("Upload-Offset")); else url = null;
    }
    if (!url) {
      const meta = `filename ${b64(this.file.name)},visibility ${b64(this.visibility)}`;
      const created = await fetch("/api/v1/uploads/", { method: "POST", headers: this.tusHeaders({ "Upload-Length": String(this.file.size), "Upload-Metadata": meta }) });
      if (!created.ok) throw new Error((await created.json()).error.message);
      url = created.headers.get("Location");
      localStorage.setItem(this.key, url);
    }
    this.url = url;
    await this.send(offset);
  }
  async send(offset) {
    while (offset < this.file.size) {
      if (this.paused) { this.row.state.textContent = "paused"; return; }
      const body = this.file.slice(offset, offset + CHUNK);
      const res = await fetch(this.url, { method: "PATCH", body, headers: this.tusHeaders({ "Content-Type": "application/offset+octet-stream", "Upload-Offset": String(offset) }) });
      if (!res.ok) {
        let message = `HTTP ${res.status}`;
        try { message = (await res.json()).error.message; } catch (e) { /* keep the status */ }
        throw new Error(message);
      }
      offset = Number(res.headers.get("Upload-Offset"));
      this.row.progress.value = offset; this.row.state.textContent = `${size(offset)} of ${size(this.file.size)}`;
    }
    localStorage.removeItem(this.key);
    const info = await api("GET", this.url);
    this.row.state.replaceChildren(info.duplicate ? "already in the library: " : "done: ", el("a", { href: `/items/${info.item_id}`, text: "open" }));
  }
}

function initUpload() {
  const input = document.getElementById("files");
  if (!input) return;
  const list = document.getElementById("uploads");
  const zone = document.getElementById("dropzone");
  const add = (files) => {
    for (const file of files) {
      const progress = el("progress", { max: String(file.size || 1), value: "0" });
      const state = el("span", { class: "hint", text: "starting" });
      const pause = el("button", { type: "button", text: "Pause" });
      const item = el("li", {}, el("strong", { text: file.name }), pause, progress, state);
      list.append(item);
      const upload = new TusUpload(file, document.getElementById("upload-visibility").value || "private", { progress, state });
      const go = () => upload.start().catch((e) => { state.textContent = e.message; state.className = "error"; });
      pause.addEventListener("click", () => {
        upload.paused = !upload.paused; pause.textContent = upload.paused ? "Resume" : "Pause";
        if (!upload.paused) go();
      });
      go();
    }
  };
  input.addEventListener("change", () => add(input.files));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); add(e.dataTransfer.files); });
}

// -- downloads: live progress over Server-Sent Events ---------------------------------
function downloadRow(d) {
  let row = document.getElementById(`dl-${d.id}`);
  if (!row) {
    row = el("tr", { id: `dl-${d.id}`, "data-id": d.id },
      el("td", { class: "title" }), el("td", { class: "state" }),
      el("td", { class: "progress" }, el("progress", { max: "1", value: "0" }), " ", el("span", { class: "bytes" })),
      el("td", { class: "message" }), el("td", { class: "buttons" }));
    if (document.getElementById("download-form")) {  // an owner: the same buttons as the server-rendered rows
      row.querySelector(".buttons").append(el("button", { "data-dl": "retry", text: "Retry" }), " ",
        el("button", { "data-dl": "cancel", text: "Cancel" }), " ", el("button", { "data-dl": "delete", text: "Delete" }));
    }
    document.getElementById("download-rows").prepend(row);
  }
  return row;
}

function renderDownload(d) {
  if (d.state === "deleted") { document.getElementById(`dl-${d.id}`)?.remove(); return; }
  const row = downloadRow(d);
  const title = row.querySelector(".title");
  if (d.item_id) title.replaceChildren(el("a", { href: `/items/${d.item_id}`, text: d.title || d.url || "" }));
  else if (d.title || d.url) title.textContent = d.title || d.url;
  row.querySelector(".state").textContent = d.state;
  const bar = row.querySelector("progress");
  if (d.total) bar.max = d.total;
  bar.value = d.bytes || 0;
  row.querySelector(".bytes").textContent = size(d.bytes) + (d.speed ? ` · ${size(d.speed)}/s` : "") + (d.eta ? ` · ${Math.round(d.eta)} s left` : "");
  if (d.message) row.querySelector(".message").textContent = d.message;
}

function initDownloads() {
  const rows = document.getElementById("download-rows");
  if (!rows) return;
  const events = new EventSource("/api/v1/downloads/events");
  events.addEventListener("snapshot", (e) => JSON.parse(e.data).forEach(renderDownload));
  events.addEventListener("download", (e) => renderDownload(JSON.parse(e.data)));
  const form = document.getElementById("download-form");
  if (form) form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try { const d = await api("POST", "/api/v1/downloads", { url: form.url.value, visibility: form.visibility.value }); renderDownload(d); say("download-result", "Queued."); form.url.value = ""; }
    catch (e) { say("download-result", e.message, true); }
  });
  rows.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-dl]");
    if (!button) return;
    const id = button.closest("tr").dataset.id;
    try {
      if (button.dataset.dl === "delete") await api("DELETE", `/api/v1/downloads/${id}?delete_file=false`);
      else renderDownload(await api("PATCH", `/api/v1/downloads/${id}`, { action: button.dataset.dl }));
    } catch (e) { button.closest("tr").querySelector(".message").textContent = e.message; }
  });
}

// -- network: invites, joining, removing members -------------------------------------
function initNetwork() {
  const invite = document.getElementById("invite-form");
  if (invite) invite.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const result = await api("POST", "/api/v1/network/invites", { ttl: invite.ttl.value, uses: Number(invite.uses.value) });
      document.getElementById("invite-token").value = result.token;
      document.getElementById("invite-out").hidden = false;
    } catch (e) { say("network-result", e.message, true); }
  });
  document.getElementById("copy-invite")?.addEventListener("click", () => {
    const token = document.getElementById("invite-token");
    token.select();
    navigator.clipboard?.writeText(token.value);
    say("network-result", "Invite copied.");
  });
  const join = document.getElementById("join-form");
  if (join) join.addEventListener("submit", async (event) => {
    event.preventDefault();
    try { const r = await api("POST", "/api/v1/network/join", { token: join.token.value.trim() }); say("network-result", `Joined the group of ${r.inviter.name}.`); setTimeout(() => location.reload(), 800); }
    catch (e) { say("network-result", e.message, true); }
  });
  for (const button of document.querySelectorAll("[data-remove]")) {
    button.addEventListener("click", async () => {
      if (!confirm(`Remove ${button.dataset.name} from the whole group?`)) return;
      try { await api("DELETE", `/api/v1/network/members/${button.dataset.remove}`); location.reload(); }
      catch (e) { say("network-result", e.message, true); }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  initSearch(); initItem(); initUpload(); initDownloads(); initNetwork();
});
