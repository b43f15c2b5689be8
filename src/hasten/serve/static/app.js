// hasten serve's page: posts a streamed request and shows each partial image as it lands.
// Everything the server or the user wrote is shown with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

async function init() {
  const health = await (await fetch("/health")).json();
  $("model").textContent = health.model;
  $("key-label").hidden = !health.needs_key;
  const methods = ["chords", "sequential", "paradigms", "srds", "parasolver", "parasolver-turbo"];
  for (const name of methods) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    if (name === health.defaults.method) option.selected = true;
    $("method").append(option);
  }
  $("steps").value = health.defaults.steps;
  if (health.defaults.cores) $("cores").value = health.defaults.cores;
  $("form").addEventListener("submit", (event) => { event.preventDefault(); generate(); });
}

function caption(figure, text) {
  const label = document.createElement("figcaption");
  label.textContent = text;
  figure.append(label);
}

function show(event, final) {
  const figure = document.createElement("figure");
  figure.className = final ? "final" : "preview";
  const image = document.createElement("img");
  image.alt = final ? "final image" : "preview";
  image.src = "data:image/png;base64," + event.b64_json;
  figure.append(image);
  const h = event.hasten;
  const time = h.elapsed_s.toFixed(2) + " s";
  if (final) {
    caption(figure, `final · round ${h.round} · ${time}`);
    caption(figure, h.exact ? "= sequential sampling" : "approximate (not the sequential result)");
  } else {
    caption(figure, `core ${h.core} · round ${h.round} · ${time}`);
  }
  figure.dataset.round = h.round;
  $("previews").append(figure);
}

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function generate() {
  $("previews").replaceChildren();
  $("shown-prompt").textContent = $("prompt").value;
  const method = $("method").value;
  const hasten = { method, steps: Number($("steps").value) };
  if (method !== "sequential") hasten.cores = Number($("cores").value);
  const body = { prompt: $("prompt").value, n: 1, stream: true, seed: Number($("seed").value),
                 response_format: "b64_json", hasten };
  const headers = { "Content-Type": "application/json" };
  if ($("key").value) headers.Authorization = "Bearer " + $("key").value;
  $("generate").disabled = true;
  status("generating…");
  try {
    const reply = await fetch("/v1/images/generations", { method: "POST", headers, body: JSON.stringify(body) });
    if (!reply.ok) {
      const error = await reply.json().catch(() => ({ error: { message: reply.statusText } }));
      status(`${reply.status}: ${error.error.message}`, true);
      return;
    }
    const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (!data) continue;
        const event = JSON.parse(data);
        if (event.error) { status(event.error.message, true); return; }
        if (event.type === "image_generation.partial_image") show(event, false);
        if (event.type === "image_generation.completed") {
          show(event, true);
          status(`done: ${event.hasten.round} rounds, ${event.hasten.nfe} NFE, ${event.hasten.wall_s.toFixed(3)} s sampling`);
        }
      }
    }
  } catch (error) {
    status(String(error), true);
  } finally {
    $("generate").disabled = false;
  }
}

init();
