"use strict";
// What comes from the run (stream names, labels) is only ever set as textContent, never parsed as HTML: a stream
// or a class called <script> shows as text.

const CHANGES_SHOWN = 200;
const RECONNECT_MS = 2000;
const tiles = new Map();
const decoder = new TextDecoder();

function tileFor(stream) {
  let tile = tiles.get(stream.id);
  if (tile) return tile;
  const element = document.getElementById("tile").content.firstElementChild.cloneNode(true);
  element.dataset.stream = stream.id;
  element.querySelector(".name").textContent = stream.name;
  element.querySelector(".name").title = stream.name;
  const part = (name) => element.querySelector(name);
  tile = {
    element, url: null,
    picture: part(".picture"), state: part(".state"), label: part(".label"), score: part(".score"),
    bars: part(".bars"), fps: part(".fps"), latency: part(".latency"), dropped: part(".dropped"), frame: part(".frame"),
  };
  tile.picture.alt = stream.name;
  tiles.set(stream.id, tile);
  document.getElementById("tiles").appendChild(element);
  return tile;
}

function readable(name) {
  return name.replaceAll("_", " ");
}

function showStats(stats) {
  for (const stream of stats.streams) {
    const tile = tileFor(stream);
    tile.state.textContent = stream.state;
    tile.state.className = `state ${stream.state}`;
    tile.dropped.textContent = stream.dropped;
  }
}

// A frame message: a 4-byte length, that many bytes of JSON (the frame's index and labels), then the JPEG.
function showFrame(data) {
  const length = new DataView(data).getUint32(0);
  const header = JSON.parse(decoder.decode(new Uint8Array(data, 4, length)));
  const tile = tiles.get(header.stream_id);
  if (!tile) return;
  const previous = tile.url;
  tile.url = URL.createObjectURL(new Blob([new Uint8Array(data, 4 + length)], { type: "image/jpeg" }));
  tile.picture.src = tile.url;
  if (previous) URL.revokeObjectURL(previous);
  tile.element.dataset.frame = header.frame;
  tile.frame.textContent = header.frame;
  tile.label.textContent = header.label ? readable(header.label.name) : "nothing";
  tile.score.textContent = header.label ? header.label.score.toFixed(2) : "";
  tile.fps.textContent = header.fps === null ? "-" : header.fps.toFixed(1);
  tile.latency.textContent = header.latency_ms.toFixed(0);
  tile.bars.replaceChildren(...header.top_k.map((label) => {
    const bar = document.getElementById("bar").content.firstElementChild.cloneNode(true);
    bar.querySelector(".name").textContent = readable(label.name);
    bar.querySelector(".fill").style.width = `${(label.score * 100).toFixed(1)}%`;
    bar.querySelector(".score").textContent = label.score.toFixed(2);
    return bar;
  }));
}

function showChange(change) {
  const row = document.createElement("tr");
  row.dataset.seq = change.seq;
  const cells = [
    new Date(change.at * 1000).toLocaleTimeString(),
    change.stream,
    change.frame,
    change.label === null ? "nothing" : readable(change.label.name),
    change.label === null ? "" : change.label.score.toFixed(2),
  ];
  for (const text of cells) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.appendChild(cell);
  }
  const log = document.getElementById("changes");
  log.prepend(row);
  while (log.children.length > CHANGES_SHOWN) log.lastElementChild.remove();
}

function setConnection(state, text) {
  const badge = document.getElementById("connection");
  badge.textContent = text;
  badge.className = `state ${state}`;
}

let lastChange = 0;

function connect() {
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => setConnection("live", "live");
  socket.onmessage = (message) => {
    if (typeof message.data !== "string") {
      showFrame(message.data);
      return;
    }
    const data = JSON.parse(message.data);
    if (data.type === "stats") showStats(data);
    // A page that reconnects is sent the remembered changes again; each is shown once.
    else if (data.type === "change" && data.seq > lastChange) {
      lastChange = data.seq;
      showChange(data);
    }
  };
  socket.onclose = (event) => {
    // 1001, going away: the run has ended, and there is nothing to reconnect to.
    if (event.code === 1001) {
      setConnection("ended", "run ended");
      return;
    }
    setConnection("disconnected", "disconnected: reconnecting");
    setTimeout(connect, RECONNECT_MS);
  };
}

connect();
