// Kiln's web page: submit a job, follow its live events, show the images and seeds.
// When the API needs a key, the page asks for one and keeps it in sessionStorage only.
const $ = (id) => document.getElementById(id);
let models = {};
const KEY = "kiln-api-key";

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
  $("width").value = m.defaults.width;
  $("height").value = m.defaults.height;
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
  return job;
}

function showCurl() {
  const body = JSON.stringify(request());
  const auth = apiKey() ? ` -H "authorization: Bearer $KILN_API_KEY"` : "";
  $("curl").textContent = `curl -s -XPOST ${location.origin}/v1/jobs -H 'content-type: application/json'${auth} -d '${body}'`;
}

function status(text) { $("status").textContent = text; }

function showError(err) {
  const fields = err.fields ? " — " + Object.entries(err.fields).map(([k, v]) => `${k}: ${[].concat(v).join(", ")}`).join("; ") : "";
  $("error").textContent = `${err.message}${fields}`;
  $("error").hidden = false;
}

function showImages(job) {
  $("gallery").replaceChildren(...job.images.map((im) => {
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
