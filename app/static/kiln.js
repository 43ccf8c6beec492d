// Kiln's web page: submit a job, follow its live events, show the images and seeds.
const $ = (id) => document.getElementById(id);
let models = {};

async function loadModels() {
  const res = await fetch("/v1/models");
  const body = await res.json();
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
  $("curl").textContent = `curl -s -XPOST ${location.origin}/v1/jobs -H 'content-type: application/json' -d '${body}'`;
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

async function getJob(id) { return (await fetch(`/v1/jobs/${id}`)).json(); }

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
  if (!window.EventSource) return poll(id);
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
  const res = await fetch("/v1/jobs", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(request()),
  });
  const body = await res.json();
  if (!res.ok) { showError(body.error); $("submit").disabled = false; status("Rejected."); return; }
  status(body.queue_position ? `Queued (position ${body.queue_position}).` : "Queued.");
  follow(body.id);
});
$("model").addEventListener("change", () => { applyDefaults(); showCurl(); });
$("job-form").addEventListener("input", showCurl);
$("copy-curl").addEventListener("click", () => navigator.clipboard?.writeText($("curl").textContent));
loadModels().then(showCurl);
