// The patrol page (巡课): live classrooms in scope in a grid, recordings with their knowledge-point clips.
// It plays only what the API gives it (docs/recording.md, "The HTTP API the patrol page uses"): signed
// /media/ URLs served by nginx. `#play=<signed /media/ URL>` opens one stream or clip alone, to share a link.

const TOKEN_KEY = "lianxiao.patrol.token"; // sessionStorage: gone when the tab closes
const REFRESH_SECONDS = 15;
const MAX_PLAYING = 9; // a 3 × 3 grid; more tiles wait for a click, so a bureau's list cannot flood the browser
const PAGE_SIZE = 20;
const RETRY_SECONDS = 2;
const MAX_RETRIES = 30; // a live playlist appears a few seconds after the lesson starts

const $ = (id) => document.getElementById(id);
const tiles = new Map(); // session_id -> tile
let resourcesOffset = 0;
let playback = null; // {resource, detach, watch, coursewareDetach}
let refreshTimer = null;

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

// One API call with the token; a problem+json answer becomes an ApiError with its detail.
async function api(path, { method = "GET", body, keepalive = false } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, keepalive, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const detail = (data && (data.detail || data.title)) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, detail);
  }
  return data;
}

// Only signed media paths are played: same origin or absolute http(s) URLs whose path is /media/...
function mediaUrl(value) {
  try {
    const url = new URL(value, location.href);
    if (!["http:", "https:"].includes(url.protocol) || !url.pathname.startsWith("/media/")) return null;
    return url.href;
  } catch { return null; }
}

// Attach a signed URL to a <video>: HLS through hls.js (MSE), anything else (MP4, clips) natively.
// Returns a function that detaches it. `onGone` is told when the URL was refused or expired.
function attach(video, url, { onGone = () => {}, onError = () => {} } = {}) {
  const isHls = new URL(url).pathname.endsWith(".m3u8");
  const tryPlay = () => video.play().catch(() => {}); // muted autoplay; a refused play() leaves the controls
  if (isHls && window.Hls && window.Hls.isSupported()) {
    const hls = new window.Hls({ liveSyncDurationCount: 3, maxBufferLength: 20, backBufferLength: 30 });
    let retries = 0;
    let timer = null;
    hls.on(window.Hls.Events.MANIFEST_PARSED, () => { retries = 0; tryPlay(); });
    hls.on(window.Hls.Events.ERROR, (_event, data) => {
      if (!data.fatal) return;
      const code = data.response && data.response.code;
      if (code === 403 || code === 410) { onGone(code); return; }
      if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR) { hls.recoverMediaError(); return; }
      if (++retries > MAX_RETRIES) { onError(`${data.details}`); return; }
      timer = setTimeout(() => hls.loadSource(url), RETRY_SECONDS * 1000); // e.g. the playlist is not there yet
    });
    hls.loadSource(url);
    hls.attachMedia(video);
    return () => { clearTimeout(timer); hls.destroy(); };
  }
  if (isHls && !video.canPlayType("application/vnd.apple.mpegurl")) {
    onError("this browser plays no HLS (no Media Source Extensions)");
    return () => {};
  }
  // A <video> does not say why a file failed: one byte asked again tells a refused or expired URL apart.
  const failed = () => {
    fetch(url, { headers: { Range: "bytes=0-0" } })
      .then((answer) => ([403, 410].includes(answer.status) ? onGone(answer.status)
        : onError(video.error ? `media error ${video.error.code}` : "media error")))
      .catch(() => onError("network error"));
  };
  video.addEventListener("error", failed);
  video.src = url;
  tryPlay();
  return () => {
    video.removeEventListener("error", failed);
    video.pause();
    video.removeAttribute("src");
    video.load();
  };
}

// Who watched what, for how long (POST /v1/watches): seconds are counted only while the video plays in a
// visible tab, and reported as the increment since the last heartbeat.
class Watch {
  constructor(kind, targetId, video) {
    this.kind = kind; this.targetId = targetId; this.video = video;
    this.id = null; this.unreported = 0; this.ended = false;
    this.ticker = setInterval(() => this.tick(), 1000);
    this.heartbeat = null;
    this.started = null;
  }
  tick() {
    const v = this.video;
    if (v.paused || v.ended || v.readyState < 3 || document.visibilityState !== "visible") return;
    this.unreported += 1;
    if (!this.started) this.started = this.open();
  }
  async open() {
    try {
      const answer = await api("/v1/watches", { method: "POST", body: { target_kind: this.kind, target_id: this.targetId } });
      if (this.ended) { this.close(answer.id); return; }
      this.id = answer.id;
      const every = Math.max(5, Number(answer.heartbeat_seconds) || 30);
      this.heartbeat = setInterval(() => this.beat(), every * 1000);
    } catch (error) {
      console.warn("watch not recorded:", error.message); // playing matters more than counting
    }
  }
  async beat() {
    if (!this.id || this.unreported <= 0) return;
    const seconds = this.unreported;
    this.unreported = 0;
    try {
      await api(`/v1/watches/${encodeURIComponent(this.id)}/heartbeat`, { method: "POST", body: { seconds_watched: seconds } });
    } catch (error) { console.warn("heartbeat failed:", error.message); }
  }
  close(id) {
    // keepalive: the request outlives the page when this runs on pagehide
    api(`/v1/watches/${encodeURIComponent(id)}/end`, { method: "POST", keepalive: true }).catch(() => {});
  }
  end() {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.ticker); clearInterval(this.heartbeat);
    if (this.id) {
      const seconds = this.unreported;
      const id = this.id;
      const finish = () => this.close(id);
      if (seconds > 0) {
        api(`/v1/watches/${encodeURIComponent(id)}/heartbeat`, { method: "POST", keepalive: true, body: { seconds_watched: seconds } })
          .catch(() => {}).finally(finish);
      } else finish();
    }
  }
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function clock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

function duration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  const hms = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  return (hms[0] ? `${hms[0]}:` : "") + hms.slice(1).map((n) => String(n).padStart(2, "0")).join(":");
}

// ---- live classrooms -------------------------------------------------------------------------------

function startTile(tile, session) {
  tile.wanted = true; // started by the page or by a click: the refresh keeps it playing
  tile.play.hidden = true;
  const url = mediaUrl(session.live_url);
  if (!url) { tile.error.textContent = "等待直播流 waiting for the stream…"; return; } // tried again at the refresh
  tile.error.textContent = "";
  tile.url = session.live_url;
  tile.expiresAt = Date.parse(session.expires_at) || Infinity;
  tile.detach = attach(tile.video, url, {
    onGone: () => { tile.error.textContent = "链接过期，正在更新 URL expired, renewing…"; tile.expiresAt = 0; },
    onError: (message) => {
      tile.error.textContent = `无法播放 cannot play: ${message}`;
      if (tile.detach) tile.detach();
      tile.detach = null; // the next refresh tries again with a fresh URL
    },
  });
  tile.watch = tile.watch || new Watch("live_session", session.session_id, tile.video);
}

function stopTile(tile) {
  if (tile.detach) tile.detach();
  tile.detach = null;
  if (tile.watch) tile.watch.end();
  tile.watch = null;
}

function newTile(session) {
  const root = element("figure", { class: "tile", "data-session-id": session.session_id });
  const video = element("video", { muted: "", playsinline: "", controls: "" });
  video.muted = true; // the property, not only the attribute, allows autoplay
  const caption = element("figcaption");
  const play = element("button", { type: "button", class: "play" }, "▶ 播放 Play");
  const error = element("span", { class: "error" });
  root.append(video, play, caption, error);
  const tile = { root, video, caption, play, error, detach: null, watch: null, url: null, expiresAt: 0, session,
    wanted: false };
  play.addEventListener("click", () => startTile(tile, tile.session));
  root.addEventListener("dblclick", () => root.classList.toggle("big"));
  return tile;
}

async function refreshLive() {
  let data;
  try {
    data = await api("/v1/patrol/sessions");
  } catch (error) {
    status(`直播列表 Live list: ${error.message}`, true);
    if (error.status === 401) signOut();
    return;
  }
  const items = Array.isArray(data && data.items) ? data.items : [];
  const seen = new Set();
  let playing = [...tiles.values()].filter((t) => t.detach).length;
  for (const session of items) {
    seen.add(session.session_id);
    let tile = tiles.get(session.session_id);
    if (!tile) {
      tile = newTile(session);
      tiles.set(session.session_id, tile);
      $("grid").append(tile.root);
      if (playing < MAX_PLAYING) { startTile(tile, session); playing += 1; }
    } else if (tile.detach && tile.expiresAt - Date.now() < 2 * REFRESH_SECONDS * 1000) {
      tile.detach(); // the signed URL is about to expire (or did): play the fresh one
      startTile(tile, session);
    } else if (tile.wanted && !tile.detach) {
      startTile(tile, session); // it had no stream yet, or failed: try again
    }
    tile.session = session;
    tile.caption.textContent = `${session.title || session.session_id} · ${clock(session.started_at)}`;
  }
  for (const [id, tile] of tiles) {
    if (!seen.has(id)) { stopTile(tile); tile.root.remove(); tiles.delete(id); } // the lesson ended
  }
  $("live-empty").hidden = tiles.size > 0;
  $("live-updated").textContent = new Date().toLocaleTimeString();
}

// ---- recordings --------------------------------------------------------------------------------------

async function loadResources() {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(resourcesOffset) });
  for (const name of ["q", "subject", "grade", "from", "to"]) if ($(name).value) query.set(name, $(name).value);
  let data;
  try { data = await api(`/v1/resources?${query}`); } catch (error) {
    status(`录播 Recordings: ${error.message}`, true);
    return;
  }
  const body = $("resources").querySelector("tbody");
  body.replaceChildren();
  for (const item of data.items || []) {
    const row = element("tr", { "data-resource-id": String(item.id) });
    const open = element("button", { type: "button" }, "播放 Play");
    open.addEventListener("click", () => openPlayback(item));
    const cells = [item.date || clock(item.started_at), item.title || item.session_id, item.subject || "",
      item.grade || "", duration(item.duration_seconds)];
    for (const text of cells) row.append(element("td", {}, String(text)));
    const actions = element("td");
    actions.append(open);
    row.append(actions);
    body.append(row);
  }
  const total = Number(data.total) || 0;
  $("resources-empty").hidden = total > 0;
  $("page").textContent = total ? `${resourcesOffset + 1}–${resourcesOffset + (data.items || []).length} / ${total}` : "";
  $("prev").disabled = resourcesOffset === 0;
  $("next").disabled = resourcesOffset + PAGE_SIZE >= total;
}

function closePlayback() {
  if (!playback) return;
  if (playback.detach) playback.detach();
  if (playback.coursewareDetach) playback.coursewareDetach();
  playback.watch.end();
  playback = null;
}

function play(url, note) {
  const video = $("playback-video");
  if (playback.detach) playback.detach();
  const checked = mediaUrl(url);
  $("playback-note").textContent = note;
  if (!checked) { $("playback-note").textContent = "no playable URL"; return; }
  playback.detach = attach(video, checked, {
    onGone: () => { $("playback-note").textContent = "链接过期 URL expired: open the recording again"; },
    onError: (message) => { $("playback-note").textContent = `无法播放 cannot play: ${message}`; },
  });
}

async function openPlayback(item) {
  closePlayback();
  let links;
  try { links = await api(`/v1/resources/${encodeURIComponent(item.id)}/playback`); } catch (error) {
    status(`播放 Playback: ${error.message}`, true);
    return;
  }
  playback = { resource: item, links, detach: null, coursewareDetach: null,
    watch: new Watch("resource", item.id, $("playback-video")) };
  $("playback").hidden = false;
  $("playback-title").textContent = `${item.title || item.session_id} · ${item.date || clock(item.started_at)}`;
  const whole = links.mp4_url || links.hls_url; // the MP4 seeks natively (HTTP Range); HLS while it is remuxed
  play(whole, "");
  const courseware = $("courseware-video");
  courseware.hidden = !links.courseware_url;
  if (links.courseware_url && mediaUrl(links.courseware_url)) {
    playback.coursewareDetach = attach(courseware, mediaUrl(links.courseware_url));
  }
  const list = $("clips");
  list.replaceChildren();
  for (const clip of links.clips || []) {
    const button = element("button", { type: "button", "data-clip-id": String(clip.id) },
      `${clip.title} (${duration(clip.start_seconds)}–${duration(clip.end_seconds)})`);
    button.addEventListener("click", () => play(clip.url, `知识点 Clip: ${clip.title}`));
    const entry = element("li");
    entry.append(button);
    list.append(entry);
  }
  if (!(links.clips || []).length) list.append(element("li", { class: "muted" }, "还没有知识点。No clips yet."));
  $("playback").scrollIntoView({ behavior: "smooth" });
}

async function addClip(event) {
  event.preventDefault();
  if (!playback) return;
  const body = { title: $("clip-title").value.trim(), start_seconds: Number($("clip-start").value),
    end_seconds: Number($("clip-end").value) };
  try {
    await api(`/v1/resources/${encodeURIComponent(playback.resource.id)}/clips`, { method: "POST", body });
  } catch (error) {
    status(`知识点 Clip: ${error.message}`, true);
    return;
  }
  status(`已添加 Added: ${body.title}`);
  $("clip-form").reset();
  await openPlayback(playback.resource);
}

// ---- the page ------------------------------------------------------------------------------------------

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(refreshTimer);
  for (const [id, tile] of tiles) { stopTile(tile); tile.root.remove(); tiles.delete(id); }
  closePlayback();
  for (const id of ["live", "library", "playback", "sign-out"]) $(id).hidden = true;
  $("token-form").hidden = false;
}

function signedIn() {
  $("token-form").hidden = true;
  for (const id of ["live", "library", "sign-out"]) $(id).hidden = false;
  status("");
  refreshLive();
  loadResources();
  clearInterval(refreshTimer);
  refreshTimer = setInterval(refreshLive, REFRESH_SECONDS * 1000);
}

// `#play=<signed URL>`: one stream or clip alone, no token needed (the URL is the permission).
function playShared() {
  const match = /^#play=(.+)$/.exec(location.hash);
  if (!match) return false;
  const url = mediaUrl(decodeURIComponent(match[1]));
  $("single").hidden = false;
  const video = $("single-video");
  video.muted = true;
  if (playShared.detach) playShared.detach();
  $("single-error").textContent = url ? "" : "这不是播放链接 Not a playback link";
  if (url) {
    playShared.detach = attach(video, url, {
      onGone: (code) => { $("single-error").textContent = code === 410 ? "链接已过期 This link has expired" : "链接无效 This link is not valid"; },
      onError: (message) => { $("single-error").textContent = `无法播放 cannot play: ${message}`; },
    });
  }
  return true;
}

function main() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    signedIn();
  });
  $("sign-out").addEventListener("click", signOut);
  $("refresh").addEventListener("click", refreshLive);
  $("search").addEventListener("submit", (event) => { event.preventDefault(); resourcesOffset = 0; loadResources(); });
  $("prev").addEventListener("click", () => { resourcesOffset = Math.max(0, resourcesOffset - PAGE_SIZE); loadResources(); });
  $("next").addEventListener("click", () => { resourcesOffset += PAGE_SIZE; loadResources(); });
  $("whole").addEventListener("click", () => playback && play(playback.links.mp4_url || playback.links.hls_url, ""));
  $("clip-start-now").addEventListener("click", () => { $("clip-start").value = $("playback-video").currentTime.toFixed(1); });
  $("clip-end-now").addEventListener("click", () => { $("clip-end").value = $("playback-video").currentTime.toFixed(1); });
  $("clip-form").addEventListener("submit", addClip);
  window.addEventListener("hashchange", playShared);
  // Leaving the page ends every watch (keepalive requests outlive it).
  window.addEventListener("pagehide", () => { for (const tile of tiles.values()) stopTile(tile); closePlayback(); });
  playShared();
  if (token()) signedIn();
}

main();
