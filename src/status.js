// The status page's script (served at /status.js by src/http.rs; plain JavaScript, no
// library). Every second it fetches /api/v1/stats, writes each value into the table cell
// whose data-key is the JSON key, and draws the messages received and sent per second over
// the last minute on the canvas.
//
// For the browser test (tests/it/browser.rs): <html data-polls="N"> counts the successful
// polls, and with ?report=<url> in the page's address the page GETs
// <url>?ok=1&rate=<received/s> once a poll has seen messages arrive (two polls at least, as a
// rate needs two), or <url>?ok=0&detail=<why> on an error or after REPORT_TIMEOUT_MS.
"use strict";

const POLL_MS = 1000;
const WINDOW = 60; // samples (seconds) on the chart
const REPORT_TIMEOUT_MS = 20000;

const report = new URLSearchParams(location.search).get("report");
let reported = false;
const started = Date.now();

function sendReport(query) {
  if (!report || reported) return;
  reported = true;
  // A cross-origin GET: no-cors, as only its arrival matters.
  fetch(report + "?" + query, { mode: "no-cors" }).catch(() => {});
}

// 1d 2h 3m 4s, leading zero units left out (as the server writes it).
function humanDuration(s) {
  const parts = [[Math.floor(s / 86400), "d"], [Math.floor(s / 3600) % 24, "h"], [Math.floor(s / 60) % 60, "m"]];
  let out = "";
  for (const [value, unit] of parts) {
    if (value > 0 || out !== "") out += value + unit + " ";
  }
  return out + (s % 60) + "s";
}

function mean(h, scale, unit) {
  return h.count === 0 ? "none" : (h.sum * scale / h.count).toFixed(2) + unit;
}

// The text of the cell for `key`, as the server renders it.
function format(key, value) {
  if (value === null) return "unavailable";
  switch (key) {
    case "uptime_seconds": return humanDuration(value) + " (" + value + " s)";
    case "commit_duration_seconds": return mean(value, 1000, " ms");
    case "commit_batch_ops": return mean(value, 1, "");
  }
  if (typeof value === "object" && "total" in value) return String(value.total);
  return String(value);
}

function update(stats) {
  for (const cell of document.querySelectorAll("td[data-key]")) {
    const key = cell.dataset.key;
    if (key in stats) cell.textContent = format(key, stats[key]);
  }
  for (const span of document.querySelectorAll("span[data-qos]")) {
    const v = stats[span.dataset.qos];
    if (v) span.textContent = "QoS 0: " + v.qos0 + ", 1: " + v.qos1 + ", 2: " + v.qos2;
  }
}

// [{received, sent}] per second, newest last, at most WINDOW.
const rates = [];
let last = null; // {t, received, sent} of the previous poll

function draw() {
  const canvas = document.getElementById("chart");
  if (!canvas) return;
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 4;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...rates.map((r) => Math.max(r.received, r.sent)));
  ctx.fillStyle = "#666";
  ctx.font = "11px sans-serif";
  ctx.fillText(max.toFixed(1) + "/s", pad, 12);
  ctx.fillText("-" + WINDOW + " s", pad, h - pad);
  for (const [field, colour] of [["received", "#1f77b4"], ["sent", "#d62728"]]) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    rates.forEach((r, i) => {
      const x = w - pad - (rates.length - 1 - i) * (w - 2 * pad) / (WINDOW - 1);
      const y = h - pad - r[field] / max * (h - 2 * pad - 14);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

function sample(stats) {
  const now = performance.now();
  const current = { t: now, received: stats.messages_received.total, sent: stats.messages_sent.total };
  if (last !== null && now > last.t) {
    const dt = (now - last.t) / 1000;
    rates.push({ received: (current.received - last.received) / dt, sent: (current.sent - last.sent) / dt });
    if (rates.length > WINDOW) rates.shift();
    const r = rates[rates.length - 1];
    document.getElementById("rate-received").textContent = r.received.toFixed(1);
    document.getElementById("rate-sent").textContent = r.sent.toFixed(1);
  }
  last = current;
}

let polls = 0;

async function poll() {
  try {
    const response = await fetch("/api/v1/stats", { cache: "no-store" });
    if (!response.ok) throw new Error("/api/v1/stats: HTTP " + response.status);
    const stats = await response.json();
    update(stats);
    sample(stats);
    draw();
    polls += 1;
    document.documentElement.dataset.polls = String(polls);
    document.getElementById("poll-status").textContent = "";
    const r = rates[rates.length - 1];
    if (polls >= 2 && r && r.received > 0) {
      sendReport("ok=1&rate=" + encodeURIComponent(r.received.toFixed(2)));
    } else if (Date.now() - started > REPORT_TIMEOUT_MS) {
      sendReport("ok=0&detail=" + encodeURIComponent("no messages after " + polls + " polls"));
    }
  } catch (e) {
    document.getElementById("poll-status").textContent = "(" + e + ")";
    sendReport("ok=0&detail=" + encodeURIComponent(String(e)));
  }
  setTimeout(poll, POLL_MS);
}

poll();
