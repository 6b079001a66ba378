// mailvalve dashboard: polls /api/v1/status every 2 s and draws it. No dependencies,
// no external requests. English or German: ?lang=de, else the browser's language.
"use strict";

const T = {
  en: {
    received: "received", queued: "queued", delivered: "delivered", deferred: "deferred",
    failed: "failed", suppressed: "suppressed", eta: "time left at this pace",
    pause: "Pause", resume: "Resume", retry: "Retry all deferred now",
    limits: "Limits: what the provider allows, what mailvalve learned and uses",
    chart: "Last hour", open: "connections open", limit: "connection limit",
    rate: "rate (msg/s)", throttles: "refusals",
    timeline: "Pauses and throttles: the provider's words", failures: "Most recent failures",
    updated: "updated", running: "sending", paused: "paused",
    pausedOperator: "Delivery is paused by the operator. Mail is still accepted and queued.",
    pausedAccount: "The provider paused sending: ", until: "until",
    connections: "Connections", rateRow: "Rate (messages/s)", now: "now", learned: "learned ceiling",
    max: "configured maximum", unlimited: "unlimited", none: "none yet", done: "done",
    unknown: "unknown", nothing: "nothing so far", dueNow: "message(s) due now",
    reloadFailed: "The last configuration reload was refused; the running configuration stays: ",
    passthrough: "passthrough", queue: "queue", explain: "why?", noToken: "Token required: ",
    auth: "credentials refused", quota: "quota spent", policy: "repeated policy blocks",
  },
  de: {
    received: "angenommen", queued: "in der Warteschlange", delivered: "zugestellt",
    deferred: "zurückgestellt", failed: "fehlgeschlagen", suppressed: "gesperrt",
    eta: "Restzeit bei diesem Tempo", pause: "Anhalten", resume: "Fortsetzen",
    retry: "Alle zurückgestellten jetzt versuchen",
    limits: "Grenzen: was der Provider erlaubt, was mailvalve gelernt hat und nutzt",
    chart: "Letzte Stunde", open: "offene Verbindungen", limit: "Verbindungsgrenze",
    rate: "Rate (Nachr./s)", throttles: "Ablehnungen",
    timeline: "Pausen und Drosselungen: die Worte des Providers",
    failures: "Letzte Fehlschläge", updated: "aktualisiert", running: "sendet",
    paused: "angehalten",
    pausedOperator: "Die Zustellung ist vom Betreiber angehalten. Mail wird weiter angenommen.",
    pausedAccount: "Der Provider hat das Senden pausiert: ", until: "bis",
    connections: "Verbindungen", rateRow: "Rate (Nachrichten/s)", now: "jetzt",
    learned: "gelernte Obergrenze", max: "konfiguriertes Maximum", unlimited: "unbegrenzt",
    none: "noch keine", done: "fertig", unknown: "unbekannt", nothing: "bisher nichts",
    dueNow: "Nachricht(en) jetzt fällig",
    reloadFailed: "Das letzte Neuladen der Konfiguration wurde abgelehnt; die laufende bleibt: ",
    passthrough: "Durchleitung", queue: "Warteschlange", explain: "warum?",
    noToken: "Token nötig: ", auth: "Zugangsdaten abgelehnt", quota: "Kontingent erschöpft",
    policy: "wiederholte Richtlinien-Sperren",
  },
};

const params = new URLSearchParams(location.search);
const lang = (params.get("lang") || navigator.language || "en").toLowerCase().startsWith("de") ? "de" : "en";
const t = (k) => T[lang][k] || T.en[k] || k;
document.documentElement.lang = lang;
document.querySelectorAll("[data-t]").forEach((el) => { el.textContent = t(el.dataset.t); });
const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat(lang);

function headers(steer) {
  const h = { "Accept": "application/json" };
  const token = sessionStorage.getItem("mailvalve-token");
  if (token) h["Authorization"] = "Bearer " + token;
  if (steer) h["X-Mailvalve-Steer"] = "1";
  return h;
}

async function api(path, method) {
  const r = await fetch("/api/v1/" + path, { method: method || "GET", headers: headers(method === "POST") });
  if (r.status === 401) {
    const token = prompt(t("noToken") + "http.token");
    if (token) { sessionStorage.setItem("mailvalve-token", token); }
    throw new Error("401");
  }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.status);
  return body;
}

function duration(s) {
  if (s === null || s === undefined) return t("unknown");
  if (s <= 0) return t("done");
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h} h ${m} min` : m > 0 ? `${m} min` : `${s} s`;
}

function clock(ms) { return new Date(ms).toLocaleTimeString(lang); }

function setText(id, v) { $(id).textContent = v; }

function row(cells) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => { const td = document.createElement(i ? "td" : "th"); td.textContent = c; tr.appendChild(td); });
  return tr;
}

function drawChart(history) {
  const svg = $("chart");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  if (history.length < 2) return;
  const t0 = history[0].at, t1 = history[history.length - 1].at || t0 + 1;
  const maxC = Math.max(1, ...history.map((s) => Math.max(s.connection_limit, s.connections_open)));
  const maxR = Math.max(0.001, ...history.map((s) => s.rate || 0));
  const x = (s) => ((s.at - t0) / Math.max(1, t1 - t0)) * 600;
  const line = (f, max, color) => {
    const p = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    p.setAttribute("points", history.map((s) => `${x(s).toFixed(1)},${(195 - (f(s) / max) * 185).toFixed(1)}`).join(" "));
    p.setAttribute("fill", "none"); p.setAttribute("stroke", color); p.setAttribute("stroke-width", "2");
    svg.appendChild(p);
  };
  line((s) => s.connection_limit, maxC, "#1d3557");
  line((s) => s.connections_open, maxC, "#2a9d8f");
  if (history.some((s) => s.rate !== null)) line((s) => s.rate || 0, maxR, "#e9a23b");
  for (let i = 1; i < history.length; i++) {
    if (history[i].throttles > history[i - 1].throttles) {
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      r.setAttribute("x", x(history[i]) - 1); r.setAttribute("y", 0); r.setAttribute("width", 2); r.setAttribute("height", 200);
      r.setAttribute("fill", "#d62828"); svg.appendChild(r);
    }
  }
}

function fillLog(id, items) {
  const ol = $(id);
  ol.textContent = "";
  if (!items.length) { const li = document.createElement("li"); li.className = "empty"; li.textContent = t("nothing"); ol.appendChild(li); return; }
  items.slice().reverse().slice(0, 15).forEach((r) => {
    const li = document.createElement("li");
    const time = document.createElement("time"); time.textContent = clock(r.at); li.appendChild(time);
    li.appendChild(document.createTextNode(`[${r.verdict}] ${r.text} `));
    const a = document.createElement("a"); a.href = "#"; a.textContent = t("explain");
    const why = document.createElement("div"); why.className = "why";
    a.onclick = async (e) => {
      e.preventDefault();
      try {
        const x = await api(`explain?lang=${lang}&phase=${encodeURIComponent(r.phase)}&reply=${encodeURIComponent(r.text)}`);
        why.textContent = [x.meaning, x.enhanced_meaning].filter(Boolean).join(" — ") + ` (${x.verdict})`;
      } catch (err) { why.textContent = String(err.message); }
    };
    li.appendChild(a); li.appendChild(why); ol.appendChild(li);
  });
}

function pendingOf(s) { return (s.queue && s.queue.pending_recipients) || 0; }

function render(s) {
  const u = s.upstreams[0];
  const d = s.delivery;
  setText("meta", `${s.version} · ${t(s.mode)} · ${u.profile} → ${u.name}`);
  setText("received", fmt.format(s.received));
  setText("queued", s.queue && s.queue.pending_recipients !== undefined ? fmt.format(s.queue.pending_recipients) : "–");
  setText("delivered", fmt.format(d.delivered));
  setText("deferred", fmt.format(d.deferred));
  setText("failed", fmt.format(d.failed));
  setText("suppressed", fmt.format(d.suppressed));
  const stopped = s.operator_paused || u.pause.paused;
  setText("eta", stopped && pendingOf(s) > 0 ? t("paused") : duration(s.eta_seconds));
  const pending = (s.queue && s.queue.pending_recipients) || 0;
  const total = d.delivered + d.failed + pending;
  $("progress").style.width = total ? `${(100 * (d.delivered + d.failed)) / total}%` : "0";
  const paused = s.operator_paused || u.pause.paused;
  const state = $("state");
  state.textContent = paused ? t("paused") : t("running");
  state.className = "badge" + (paused ? " paused" : "");
  state.dataset.paused = paused ? "true" : "false";
  const banner = [];
  if (s.operator_paused) banner.push(t("pausedOperator"));
  if (u.pause.paused) banner.push(t("pausedAccount") + t(u.pause.reason) + (u.pause.until ? ` (${t("until")} ${clock(u.pause.until)})` : ""));
  if (s.reload && s.reload.ok === false) banner.push(t("reloadFailed") + s.reload.error);
  $("banner").hidden = !banner.length;
  $("banner").textContent = banner.join(" ");
  const tb = $("limits").tBodies[0];
  tb.textContent = "";
  tb.appendChild(row(["", t("now"), t("learned"), t("max")]));
  const c = u.connections;
  const learned = (v, at, f) => v === null || v === undefined ? t("none") : `${f(v)} (${clock(at)})`;
  tb.appendChild(row([t("connections"), `${c.open} / ${c.limit}`, learned(c.learned_ceiling, c.learned_at, (v) => v), c.max]));
  const r = u.rate;
  tb.appendChild(row([t("rateRow"), r.per_second === null ? t("unlimited") : r.per_second.toFixed(2),
    learned(r.learned_ceiling, r.learned_at, (v) => v.toFixed(2)), ""]));
  drawChart(s.history || []);
  const replies = u.recent_replies || [];
  fillLog("timeline", replies.filter((x) => /^(throttle|pause|policy|defer)/.test(x.verdict)));
  fillLog("failures", replies.filter((x) => x.code >= 500));
  setText("updated", clock(Date.now()));
}

async function refresh() {
  try { render(await api("status")); } catch (e) { setText("updated", String(e.message)); }
}

async function act(path, button) {
  button.disabled = true;
  try {
    const r = await api(path, "POST");
    setText("action-result", r.due_now !== undefined ? `${r.due_now} ${t("dueNow")}` : "");
  } catch (e) { setText("action-result", String(e.message)); }
  button.disabled = false;
  refresh();
}

$("pause").onclick = () => act("pause", $("pause"));
$("resume").onclick = () => act("resume", $("resume"));
$("retry").onclick = () => act("queue/retry", $("retry"));
refresh();
setInterval(refresh, 2000);
