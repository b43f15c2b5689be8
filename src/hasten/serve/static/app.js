// hasten serve's page: posts a streamed request and shows each partial image as it lands.
// Everything the server or the user wrote is shown with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let inputs = [];
let video = false;

async function init() {
  const health = await (await fetch("/health")).json();
  $("model").textContent = health.model;
  $("key-label").hidden = !health.needs_key;
  inputs = health.inputs || [];
  video = Boolean(health.video);
  $("image-label").hidden = !(inputs.includes("--image") || inputs.includes("--control-image"));
  $("mask-label").hidden = !inputs.includes("--mask");
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
  if (video) return makeVideo(body, headers);
  try {
    let reply;
    if (!$("image-label").hidden) {  // an edit: the picked image (and mask) as OpenAI's multipart form
      const form = new FormData();
      for (const [name, value] of Object.entries(body)) {
        form.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
      }
      if ($("image").files[0]) form.append("image", $("image").files[0]);
      if ($("mask").files[0]) form.append("mask", $("mask").files[0]);
      delete headers["Content-Type"];
      reply = await fetch("/v1/images/edits", { method: "POST", headers, body: form });
    } else {
      reply = await fetch("/v1/images/generations", { method: "POST", headers, body: JSON.stringify(body) });
    }
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
        const type = (event.type || "").replace("image_edit.", "image_generation.");
        if (type === "image_generation.partial_image") show(event, false);
        if (type === "image_generation.completed") {
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

async function makeVideo(body, headers) {
  // a video model: a /v1/videos job, polled until done, then its MP4 played
  try {
    const job = { prompt: body.prompt, seed: body.seed, hasten: body.hasten };
    const reply = await fetch("/v1/videos", { method: "POST", headers, body: JSON.stringify(job) });
    let state = await reply.json();
    if (!reply.ok) { status(`${reply.status}: ${state.error.message}`, true); return; }
    const auth = headers.Authorization ? { Authorization: headers.Authorization } : {};
    while (state.status === "queued" || state.status === "in_progress") {
      status(`${state.status}: ${state.progress}%`);
      await new Promise((resolve) => setTimeout(resolve, 300));
      state = await (await fetch("/v1/videos/" + state.id, { headers: auth })).json();
    }
    if (state.status !== "completed") { status(`failed: ${state.error ? state.error.message : state.status}`, true); return; }
    const mp4 = await (await fetch(`/v1/videos/${state.id}/content`, { headers: auth })).blob();
    $("video").src = URL.createObjectURL(mp4);
    $("video").hidden = false;
    status(`done: ${state.hasten.frames} frames at ${state.hasten.fps} fps, ${state.hasten.cost.rounds} rounds`);
  } catch (error) {
    status(String(error), true);
  } finally {
    $("generate").disabled = false;
  }
}

init();
