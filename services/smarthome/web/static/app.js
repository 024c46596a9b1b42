// The dashboard: one WebSocket, a card per sender, a live log, and the light button.
// Every event is {topic, sender, seq, ts, body}; "presence" and "error" events come from the forwarder.
"use strict";

const cards = new Map();  // sender -> {element, topic, online}
const ORDER = ["light", "coffee", "toast", "mirror"];  // cards follow the routine, whatever arrives first
const LOG_LINES = 50;
const TOKEN_REQUIRED = 4401;  // the forwarder's close code: no access token, or a wrong one
let socket;
let lightOn = null;

const describe = {
  light: (body) => ({ text: `light ${body.state}`, good: body.state === "ON" }),
  coffee: (body) => ({ text: body.status ? "coffee ready" : "idle", good: body.status }),
  toast: (body) => ({ text: body.status ? "toast ready" : "idle", good: body.status }),
  mirror: (body) => ({
    text: Object.entries(body.view).map(([k, v]) => `${k} ${v}`).join(", "),
    good: Object.values(body.view).every((v) => v === "ready"),
  }),
};

function card(sender, topic) {
  if (!cards.has(sender)) {
    const element = document.createElement("article");
    element.className = "card idle";
    element.dataset.sender = sender;
    element.dataset.topic = topic;
    element.innerHTML = '<h3><span class="name"></span><span class="badge">online</span></h3>' +
      '<div class="state">…</div><div class="meta"></div>';
    element.querySelector(".name").textContent = sender.split("@")[0] +
      (sender.includes("@") ? ` @${sender.split("@")[1].slice(0, 6)}` : "");
    const rank = (t) => ORDER.indexOf(t);
    const next = [...document.querySelectorAll("#cards .card")].find(
      (other) => rank(other.dataset.topic) > rank(topic) ||
        (other.dataset.topic === topic && other.dataset.sender > sender));
    document.getElementById("cards").insertBefore(element, next || null);
    cards.set(sender, { element, topic, online: true });
  }
  return cards.get(sender);
}

function setOnline(sender, online, missed) {
  const entry = cards.get(sender);
  if (!entry) return;
  entry.online = online;
  entry.element.classList.toggle("offline", !online);
  const badge = entry.element.querySelector(".badge");
  badge.textContent = (online ? "online" : "offline") + (missed ? ` · ${missed} missed` : "");
  entry.element.dataset.missed = String(missed || 0);
  badge.classList.toggle("offline", !online);
  entry.element.dataset.online = String(online);
}

function show(event) {
  const { text, good } = describe[event.topic](event.body);
  const entry = card(event.sender, event.topic);
  entry.element.querySelector(".state").textContent = text;
  entry.element.querySelector(".meta").textContent =
    `seq ${event.seq} · ${new Date(event.ts * 1000).toLocaleTimeString()}`;
  entry.element.classList.toggle("good", good);
  entry.element.classList.toggle("idle", !good);
  entry.element.dataset.state = text;
  setOnline(event.sender, true);
  if (event.topic === "light") {
    lightOn = event.body.state === "ON";
    const button = document.getElementById("light-button");
    button.textContent = lightOn ? "Switch light OFF" : "Switch light ON";
  }
}

function log(event) {
  const item = document.createElement("li");
  item.textContent = `${new Date(event.ts * 1000).toLocaleTimeString()} ${event.topic} ` +
    `${event.sender} #${event.seq} ${JSON.stringify(event.body)}`;
  const list = document.getElementById("log");
  list.prepend(item);
  while (list.children.length > LOG_LINES) list.lastChild.remove();
}

function connect() {
  const status = document.getElementById("connection");
  const button = document.getElementById("light-button");
  // The token goes as the cookie the forwarder set at /?token= (HttpOnly: this script never sees it).
  socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  socket.onopen = () => {
    status.textContent = "live";
    status.classList.remove("offline");
    button.disabled = false;
  };
  socket.onclose = (event) => {
    status.classList.add("offline");
    button.disabled = true;
    if (event.code === TOKEN_REQUIRED) {  // no token, or a wrong one: ask for it
      const wrong = new URLSearchParams(location.search).has("wrong-token");
      status.textContent = wrong ? "wrong access token" : "access token required";
      document.getElementById("token-form").hidden = false;
      return;
    }
    status.textContent = "disconnected, retrying…";
    setTimeout(connect, 1000);
  };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    log(event);
    if (event.topic === "presence") setOnline(event.body.sender, event.body.online, event.body.missed);
    else if (event.topic === "error") status.textContent = `error: ${event.body.error}`;
    else if (describe[event.topic]) show(event);
  };
}

document.getElementById("light-button").addEventListener("click", () => {
  socket.send(JSON.stringify({ command: "light", state: lightOn ? "OFF" : "ON" }));
});
document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();  // the forwarder keeps a right token as a cookie and sends the page back here
  location.assign(`/?token=${encodeURIComponent(document.getElementById("token").value)}`);
});
connect();
