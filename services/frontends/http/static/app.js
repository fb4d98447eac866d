// The latent explorer: plain modern JS over the HTTP/JSON API of the same server (api/v1/..., relative to the
// page, so it works under any route prefix). Nothing is fetched from anywhere else.
//
// Slider redraws are coalesced: at most one Edit request is in flight; positions that arrive meanwhile only
// mark the image dirty, and the newest position is sent when the answer comes back (the newest wins, none
// queue up). window.latentExplorer exposes counters and the last knob-change-to-image times for tests and
// benchmarks.

const API = new URL("api/v1/", document.baseURI);
const TOKEN_KEY = "latentserve-token";
const $ = (sel) => document.querySelector(sel);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  needsToken: false,
  model: "",
  info: null,
  current: null, // {latent: {values, label}, src}
  knobs: {}, // knob name -> target (only knobs the user moved)
  ends: { a: null, b: null },
  frames: [],
  playing: null,
};
const stats = { draws: 0, errors: 0, lastDrawMs: 0, drawMs: [], lastMoves: [] };
window.latentExplorer = stats;

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ------------------------------------------------------------------------------------------------ requests
async function api(path, body, { png = false } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  headers.Accept = png ? "image/png" : "application/json";
  let resp;
  try {
    resp = await fetch(new URL(path, API), {
      method: body === undefined ? "GET" : "POST", headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "UNAVAILABLE", "could not reach the server");
  }
  if (!resp.ok) {
    let err = { code: String(resp.status), message: resp.statusText };
    try { err = await resp.json(); } catch (e) { /* not JSON: keep the status line */ }
    throw new ApiError(resp.status, err.code, err.message);
  }
  return png ? resp.blob() : resp.json();
}

const PLAIN = {
  400: "The server could not use this request",
  401: "The server needs a valid API token",
  404: "Not found",
  413: "That is too large for the server",
  429: "The server is busy; try again in a moment",
  501: "This server does not offer that",
  503: "The server is unavailable right now; try again shortly",
  504: "The server took too long",
  0: "Could not reach the server",
};

function showError(e) {
  stats.errors += 1;
  const box = $("#error");
  const head = PLAIN[e.status] || "Something went wrong on the server";
  box.textContent = e.message ? `${head}: ${e.message}` : head;
  box.hidden = false;
  if (e.status === 401) askToken();
}

function clearError() { $("#error").hidden = true; }

function askToken() {
  $("#token-form").hidden = false;
  $("#token").focus();
}

// ------------------------------------------------------------------------------------------------ images
const pngSrc = (img) => (img.png ? `data:image/png;base64,${img.png}` : `data:image/jpeg;base64,${img.jpeg}`);
let blobUrls = new Map(); // element -> object URL it shows (revoked when replaced)

function setImage(el, src) {
  const old = blobUrls.get(el);
  if (old && old !== src) URL.revokeObjectURL(old);
  if (src.startsWith("blob:")) blobUrls.set(el, src); else blobUrls.delete(el);
  el.src = src;
  const link = document.querySelector(`a[data-for="${el.id}"]`); // its download link, if it has one
  if (link) {
    link.href = src;
    link.hidden = false;
  }
}

function downloadLink(src, name) {
  const a = document.createElement("a");
  a.className = "dl";
  a.textContent = "⤓";
  a.title = "download as PNG";
  a.download = `${name}.png`;
  a.href = src;
  return a;
}

// ------------------------------------------------------------------------------------------------ models
async function loadModels() {
  const { models } = await api("models");
  const sel = $("#model");
  sel.replaceChildren(...models.map((m) => new Option(`${m.name} (${m.family})`, m.name)));
  if (!models.length) throw new ApiError(404, "NOT_FOUND", "this server serves no model");
  // start on the model that meets the most quality gates (ties: the first listed)
  const passed = (m) => ((m.gates && m.gates.targets) || []).filter((t) => t.passed).length;
  const good = models.reduce((best, m) => (passed(m) > passed(best) ? m : best), models[0]);
  sel.value = good.name;
  await chooseModel(good.name);
}

async function chooseModel(name) {
  state.model = name;
  state.info = await api(`models/${encodeURIComponent(name)}`);
  const info = state.info;
  $("#class").replaceChildren(new Option("any", ""), ...info.class_names.map((c, i) => new Option(c, String(i))));
  $("#interp-method").replaceChildren(...info.interpolation_methods.map((m) => new Option(m, m)));
  $("#interp-steps").max = info.limits.max_interpolation_steps;
  state.current = null;
  state.ends = { a: null, b: null };
  buildKnobs();
  showFacts();
  await sample();
}

// ------------------------------------------------------------------------------------------------ sampling
async function sample() {
  const body = { n: Number($("#count").value) || 1, seed: Number($("#seed").value) || 0, format: "png" };
  if ($("#class").value !== "") body.label = Number($("#class").value);
  const res = await api(`models/${encodeURIComponent(state.model)}/sample`, body);
  clearError();
  const grid = $("#grid");
  grid.replaceChildren();
  res.images.forEach((img, i) => {
    const src = pngSrc(img);
    const latent = res.latents[i];
    const tile = document.createElement("div");
    tile.className = "tile";
    const el = document.createElement("img");
    el.src = src;
    el.alt = `sample ${i} (${state.info.class_names[latent.label]})`;
    el.title = `${state.info.class_names[latent.label]}: click to edit`;
    el.addEventListener("click", () => {
      grid.querySelectorAll("img.chosen").forEach((x) => x.classList.remove("chosen"));
      el.classList.add("chosen");
      setCurrent(latent, src, `sample ${i}, ${state.info.class_names[latent.label]}`);
    });
    const actions = document.createElement("div");
    actions.className = "actions";
    for (const end of ["a", "b"]) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = end.toUpperCase();
      b.dataset.end = end;
      b.title = `interpolation end ${end.toUpperCase()}`;
      b.addEventListener("click", () => setEnd(end, latent, src));
      actions.append(b);
    }
    actions.append(downloadLink(src, `${state.model}-seed${body.seed}-${i}`));
    tile.append(el, actions);
    grid.append(tile);
  });
  if (res.images.length) {
    grid.querySelector("img").classList.add("chosen");
    setCurrent(res.latents[0], pngSrc(res.images[0]), `sample 0, ${state.info.class_names[res.latents[0].label]}`);
    if (!state.ends.a) setEnd("a", res.latents[0], pngSrc(res.images[0]));
    if (!state.ends.b && res.images.length > 1) setEnd("b", res.latents[1], pngSrc(res.images[1]));
  }
}

function setCurrent(latent, src, caption) {
  state.current = { latent, src };
  $("#current-caption").textContent = caption;
  setImage($("#current-image"), src);
  if (Object.keys(state.knobs).length) redraw();
}

function setEnd(end, latent, src) {
  state.ends[end] = { latent, src };
  setImage($(`#end-${end}`), src);
}

// ------------------------------------------------------------------------------------------------ knobs
function knobUsable(k) { return k.usable !== false || $("#allow-weak").checked; }

function buildKnobs() {
  const box = $("#knobs");
  box.replaceChildren();
  state.knobs = {};
  for (const k of state.info.knobs) {
    const label = document.createElement("label");
    label.htmlFor = `knob-${k.name}`;
    label.textContent = `${k.name}${k.unit ? ` (${k.unit})` : ""}`;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", id: `knob-${k.name}`, min: k.low, max: k.high,
                           step: (k.high - k.low) / 200, value: k.kind === "pca" ? 0 : (k.low + k.high) / 2 });
    input.dataset.knob = k.name;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = "unchanged";
    if (k.usable === false) {
      const r2 = k.r2_judged == null ? "no judged R² (too few moved samples kept their class)" : `judged R² ${Number(k.r2_judged).toFixed(2)}`;
      label.title = `below its quality gate: ${r2}`;
      label.textContent += ` — ${r2}, below gate`;
    }
    input.addEventListener("input", () => {
      state.knobs[k.name] = Number(input.value);
      value.textContent = Number(input.value).toFixed(3);
      redraw();
    });
    box.append(label, input, value);
  }
  refreshKnobAvailability();
}

function refreshKnobAvailability() {
  for (const k of state.info ? state.info.knobs : []) {
    const input = document.getElementById(`knob-${k.name}`);
    const usable = knobUsable(k);
    input.disabled = !usable;
    input.previousSibling.classList.toggle("off", !usable);
  }
}

function resetKnobs() {
  buildKnobs();
  if (state.current) setImage($("#current-image"), state.current.src);
}

// One Edit in flight at most; the newest slider position wins.
let inFlight = false;
let dirty = false;
let changedAt = 0;

function redraw() {
  if (!state.current) return;
  dirty = true;
  changedAt = changedAt || performance.now();
  if (!inFlight) pump();
}

async function pump() {
  inFlight = true;
  while (dirty) {
    dirty = false;
    const started = changedAt;
    changedAt = 0;
    // factor knobs are set to a value; PCA directions move by an amount (std units) from the picked image
    const kinds = Object.fromEntries(state.info.knobs.map((k) => [k.name, k.kind]));
    const moves = Object.entries(state.knobs).map(([knob, v]) => (kinds[knob] === "pca" ? { knob, amount: v } : { knob, target: v }));
    try {
      if (!moves.length) {
        setImage($("#current-image"), state.current.src);
        continue;
      }
      const blob = await api(`models/${encodeURIComponent(state.model)}/edit`, {
        inputs: [{ latent: state.current.latent }], moves, allow_weak_knobs: $("#allow-weak").checked,
      }, { png: true });
      const el = $("#current-image");
      await new Promise((resolve) => {
        el.onload = resolve;
        el.onerror = resolve;
        setImage(el, URL.createObjectURL(blob));
      });
      clearError();
      stats.draws += 1;
      stats.lastMoves = moves;
      stats.lastDrawMs = performance.now() - started;
      stats.drawMs.push(stats.lastDrawMs);
      if (stats.drawMs.length > 1000) stats.drawMs.shift();
      el.dataset.draws = String(stats.draws);
    } catch (e) {
      showError(e);
    }
  }
  inFlight = false;
}

// ------------------------------------------------------------------------------------------------ upload
async function upload(file) {
  if (!file || !state.info) return;
  const [, h, w] = state.info.image_shape;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    showError(new ApiError(400, "INVALID_ARGUMENT", `${file.name} is not an image this browser can read`));
    return;
  }
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  canvas.getContext("2d").drawImage(bitmap, 0, 0, w, h);
  const dataUrl = canvas.toDataURL("image/png");
  $("#upload-figure").hidden = false;
  setImage($("#original"), dataUrl);
  const model = encodeURIComponent(state.model);
  const enc = await api(`models/${model}/encode`, { images: [{ png: dataUrl }] });
  const latent = enc.latents[0];
  const blob = await api(`models/${model}/decode`, { latents: [latent] }, { png: true });
  clearError();
  const src = URL.createObjectURL(blob);
  const name = state.info.class_names[latent.label];
  state.knobs = {};
  buildKnobs();
  setCurrent(latent, src, `reconstruction of ${file.name} (${w}×${h}), encoded as ${name}`);
  $("#current-image").dataset.reconstructed = String(Number($("#current-image").dataset.reconstructed || 0) + 1);
}

// ------------------------------------------------------------------------------------------------ interpolation
async function interpolate() {
  const { a, b } = state.ends;
  if (!a || !b) {
    showError(new ApiError(400, "INVALID_ARGUMENT", "pick two images with the A and B buttons first"));
    return;
  }
  const res = await api(`models/${encodeURIComponent(state.model)}/interpolate`, {
    a: { latent: a.latent }, b: { latent: b.latent }, steps: Number($("#interp-steps").value),
    method: $("#interp-method").value,
  });
  clearError();
  state.frames = res.frames.map((f) => pngSrc(f.image));
  const strip = $("#strip");
  strip.replaceChildren(...state.frames.map((src, i) => {
    const a = document.createElement("a"); // a frame downloads as PNG when clicked
    a.href = src;
    a.download = `${state.model}-${$("#interp-method").value}-frame${i}.png`;
    const img = document.createElement("img");
    img.src = src;
    img.alt = `frame ${i} (t = ${res.frames[i].t.toFixed(2)})`;
    img.title = `${img.alt}: click to download`;
    a.append(img);
    return a;
  }));
  strip.dataset.frames = String(state.frames.length);
  play(true);
}

function play(start) {
  if (state.playing) {
    clearInterval(state.playing);
    state.playing = null;
    if (!start) return;
  }
  if (!state.frames.length) return;
  let i = 0;
  let dir = 1;
  state.playing = setInterval(() => {
    $("#player").src = state.frames[i];
    if (state.frames.length > 1) {
      if (i + dir < 0 || i + dir >= state.frames.length) dir = -dir;
      i += dir;
    }
  }, 120);
}

// ------------------------------------------------------------------------------------------------ facts
function fmt(v) { return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v); }

function showFacts() {
  const info = state.info;
  const facts = {
    family: info.family, version: `${info.version} (of ${info.versions.join(", ")})`,
    "image size": `${info.image_shape[2]} × ${info.image_shape[1]}`, "latent size": info.latent_shape.join(" × "),
    classes: info.class_names.join(", "), prior: info.prior, "default sample source": info.default_sample_source,
    knobs: info.knobs.map((k) => k.name).join(", "), backend: info.backend,
  };
  const sizes = info.output_sizes;
  if (sizes && sizes.min_px !== sizes.max_px) {
    facts["output sizes"] = `${sizes.min_px} to ${sizes.max_px} px` + (sizes.multiple_of_px > 1 ? ` in steps of ${sizes.multiple_of_px}` : "");
  }
  if ((info.class_factors || []).length) {
    facts["class factors"] = info.class_factors.map((f) => `${f.name}: ${f.classes.join(", ")}`).join("; ");
  }
  $("#facts-list").replaceChildren(...Object.entries(facts).flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    return [dt, dd];
  }));
  const gates = (info.gates && info.gates.targets) || [];
  $("#judge").textContent = info.gates && info.gates.judge ? `judged by ${info.gates.judge}` : "not judged";
  $("#gates tbody").replaceChildren(...gates.map((g) => {
    const tr = document.createElement("tr");
    const cells = [g.name, g.value == null ? "not measured" : fmt(g.value),
                   g.threshold == null ? "" : `${g.op} ${fmt(g.threshold)}`, g.passed ? "pass" : "fail"];
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.append(td);
    }
    tr.lastChild.className = g.passed ? "pass" : "fail";
    tr.title = g.detail || "";
    return tr;
  }));
}

// ------------------------------------------------------------------------------------------------ wiring
function guard(fn) {
  return async (...args) => {
    try { await fn(...args); } catch (e) { showError(e); }
  };
}

async function start() {
  const health = await fetch(new URL("healthz", document.baseURI)).then((r) => r.json()).catch(() => ({}));
  state.needsToken = Boolean(health.auth);
  if (state.needsToken && !state.token) {
    askToken();
    return;
  }
  await loadModels();
}

$("#model").addEventListener("change", guard((e) => chooseModel(e.target.value)));
$("#class").addEventListener("change", guard(sample));
$("#resample").addEventListener("click", guard(sample));
$("#reseed").addEventListener("click", guard(() => {
  $("#seed").value = String(1 + Math.floor(Math.random() * 2 ** 31));
  return sample();
}));
$("#allow-weak").addEventListener("change", () => { refreshKnobAvailability(); redraw(); });
$("#reset-knobs").addEventListener("click", resetKnobs);
$("#interpolate").addEventListener("click", guard(interpolate));
$("#play").addEventListener("click", () => play(false));
$("#upload").addEventListener("change", guard((e) => upload(e.target.files[0])));
const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", guard((e) => {
  e.preventDefault();
  drop.classList.remove("over");
  return upload(e.dataTransfer.files[0]);
}));
$("#token-form").addEventListener("submit", guard(async (e) => {
  e.preventDefault();
  state.token = $("#token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("#token-form").hidden = true;
  clearError();
  await loadModels();
}));

guard(start)();
