// Kiln's web page: submit a job, follow its live events, show the images and seeds.
// An image (and a mask) dropped or picked here is read as a data URL and sent with the job.
// When the API needs a key, the page asks for one and keeps it in sessionStorage only.
const $ = (id) => document.getElementById(id);
let models = {};
const KEY = "kiln-api-key";
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"];
const inputs = { image: null, mask: null }; // data URLs of the chosen files
let submitted = null; // the image the running job started from

function apiKey() { return sessionStorage.getItem(KEY) || ""; }

// fetch() with the key, when there is one, in the header the API reads.
function api(path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  if (apiKey()) headers.authorization = `Bearer ${apiKey()}`;
  return fetch(path, { ...opts, headers });
}

async function answer(res) {
  try { return await res.json(); } catch { return { error: { message: `HTTP ${res.status}` } }; }
}

function askForKey(err) {
  $("key-form").hidden = false;
  $("forget-key").hidden = !apiKey();
  const why = err && err.message ? err.message : "an API key is required";
  $("key-error").textContent = apiKey() ? `This key was refused: ${why}` : `This Kiln needs an API key (the API says: ${why}).`;
  $("api-key").focus();
}

async function loadModels() {
  const res = await api("/v1/models");
  const body = await answer(res);
  if (res.status === 401 || res.status === 403) { askForKey(body.error); return; }
  if (!res.ok) { showError(body.error || { message: `HTTP ${res.status}` }); return; }
  $("key-form").hidden = true;
  $("forget-key").hidden = !apiKey();
  models = {};
  $("model").replaceChildren();
  for (const m of body.data) {
    models[m.id] = m;
    const opt = new Option(`${m.id}${m.stand_in ? " (stand-in)" : ""}`, m.id);
    $("model").add(opt);
  }
  applyDefaults();
}

function applyDefaults() {
  const m = models[$("model").value];
  if (!m) return;
  if (!inputs.image) { // with an image, the size comes from it
    $("width").value = m.defaults.width;
    $("height").value = m.defaults.height;
  }
  $("steps").value = m.defaults.steps;
  $("negative_prompt").disabled = !m.negative_prompt;
  $("model-help").textContent = `${m.family}, ${m.defaults.width}×${m.defaults.height}, ${m.defaults.steps} steps`;
}

function request() {
  const job = { prompt: $("prompt").value, model: $("model").value, n: Number($("n").value) };
  for (const k of ["width", "height", "steps", "seed"]) {
    if ($(k).value !== "") job[k] = Number($(k).value);
  }
  if ($("negative_prompt").value && !$("negative_prompt").disabled) job.negative_prompt = $("negative_prompt").value;
  if (inputs.image) {
    job.image = inputs.image;
    job.strength = Number($("strength").value);
    if (inputs.mask) job.mask = inputs.mask;
  }
  return job;
}

// Show the chosen image (or mask), or clear it; with an image the size comes from it.
function setInput(name, url) {
  inputs[name] = url;
  $(`${name}-preview`).hidden = !url;
  $(`${name}-clear`).hidden = !url;
  if (url) $(`${name}-preview`).src = url; else { $(`${name}-preview`).removeAttribute("src"); $(name).value = ""; }
  if (name === "image") {
    $("strength").disabled = !url;
    const m = models[$("model").value];
    $("width").value = url || !m ? "" : m.defaults.width;
    $("height").value = url || !m ? "" : m.defaults.height;
    $("width").placeholder = $("height").placeholder = url ? "from the image" : "";
  }
  showCurl();
}

function readInput(name, file) {
  $("error").hidden = true;
  if (!file) return setInput(name, null);
  if (!IMAGE_TYPES.includes(file.type)) {
    $(name).value = "";
    return showError({ message: `${file.name} is not a PNG, JPEG or WebP image`, fields: { [name]: ["PNG, JPEG or WebP"] } });
  }
  const reader = new FileReader();
  reader.onload = () => setInput(name, reader.result);
  reader.onerror = () => showError({ message: `could not read ${file.name}`, fields: { [name]: ["unreadable"] } });
  reader.readAsDataURL(file);
}

for (const name of ["image", "mask"]) {
  const zone = $(`${name}-drop`);
  $(name).addEventListener("change", () => readInput(name, $(name).files[0]));
  $(`${name}-clear`).addEventListener("click", () => setInput(name, null));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    readInput(name, e.dataTransfer.files[0]);
  });
}

function showStrength() { $("strength-value").textContent = Number($("strength").value).toFixed(2); }

function showCurl() {
  // A data URL is long: the copy shows where it goes, not its bytes.
  const body = JSON.stringify(request(), (k, v) => (typeof v === "string" && v.startsWith("data:") ? `${v.slice(0, v.indexOf(",") + 1)}...` : v));
  const auth = apiKey() ? ` -H "authorization: Bearer $KILN_API_KEY"` : "";
  $("curl").textContent = `curl -s -XPOST ${location.origin}/v1/jobs -H 'content-type: application/json'${auth} -d '${body}'`;
}

function status(text) { $("status").textContent = text; }

function showError(err) {
  const fields = err.fields ? " — " + Object.entries(err.fields).map(([k, v]) => `${k}: ${[].concat(v).join(", ")}`).join("; ") : "";
  $("error").textContent = `${err.message}${fields}`;
  $("error").hidden = false;
}

// The input the job started from, first, so that each result sits beside it.
function inputFigure(job) {
  const fig = document.createElement("figure");
  fig.className = "input";
  const img = new Image();
  img.src = submitted;
  img.alt = "the input image";
  const cap = document.createElement("figcaption");
  cap.textContent = `input · ${job.params.mode || "img2img"} · strength ${job.params.strength}`;
  fig.append(img, cap);
  return fig;
}

function showImages(job) {
  const before = submitted && job.params && job.params.image ? [inputFigure(job)] : [];
  $("gallery").replaceChildren(...before, ...job.images.map((im) => {
    const fig = document.createElement("figure");
    const img = new Image();
    img.src = im.url;
    img.alt = `${job.params.prompt} (seed ${im.seed})`;
    const cap = document.createElement("figcaption");
    cap.textContent = `seed ${im.seed} · ${im.width}×${im.height}`;
    fig.append(img, cap);
    return fig;
  }));
}

const TERMINAL = ["succeeded", "failed", "canceled"];

function showProgress(p) {
  $("progress").max = p.steps;
  $("progress").value = p.step;
  status(`Step ${p.step} of ${p.steps}`);
}

function finish(job) {
  $("submit").disabled = false;
  if (job.status === "succeeded") {
    $("progress").value = $("progress").max;
    status(`Done: ${job.images.length} image(s), batch of ${job.batch_size}.`);
    showImages(job);
  } else {
    status(job.status ? `Job ${job.status}.` : "Failed.");
    if (job.error) showError(job.error);
  }
}

async function getJob(id) { return answer(await api(`/v1/jobs/${id}`)); }

// Without an event stream (or when it drops), poll the job every 300 ms.
async function poll(id) {
  for (;;) {
    const job = await getJob(id);
    if (job.status === "running" && job.progress && job.progress.steps) showProgress(job.progress);
    if (TERMINAL.includes(job.status) || !job.status) return finish(job);
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

function follow(id) {
  // EventSource cannot send a header: with a key, poll.
  if (!window.EventSource || apiKey()) return poll(id);
  const events = new EventSource(`/v1/jobs/${id}/events`);
  events.addEventListener("started", () => status("Running…"));
  events.addEventListener("progress", (e) => showProgress(JSON.parse(e.data)));
  for (const end of TERMINAL) {
    events.addEventListener(end, async () => { events.close(); finish(await getJob(id)); });
  }
  events.onerror = () => { events.close(); poll(id); };
}

$("job-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("error").hidden = true;
  $("submit").disabled = true;
  $("progress").value = 0;
  submitted = inputs.image;
  const res = await api("/v1/jobs", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(request()),
  });
  const body = await answer(res);
  if (!res.ok) {
    showError(body.error || { message: `HTTP ${res.status}` });
    if (res.status === 401) askForKey(body.error);
    $("submit").disabled = false;
    status("Rejected.");
    return;
  }
  status(body.queue_position ? `Queued (position ${body.queue_position}).` : "Queued.");
  follow(body.id);
});
$("model").addEventListener("change", () => { applyDefaults(); showCurl(); });
$("job-form").addEventListener("input", showCurl);
$("strength").addEventListener("input", showStrength);
$("copy-curl").addEventListener("click", () => navigator.clipboard?.writeText($("curl").textContent));
$("key-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  $("api-key").value = "";
  $("error").hidden = true;
  await loadModels();
  showCurl();
});
$("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });
loadModels().then(showCurl);
