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

async function finish(id) {
  const job = await (await fetch(`/v1/jobs/${id}`)).json();
  $("submit").disabled = false;
  if (job.status === "succeeded") {
    $("progress").value = $("progress").max;
    status(`Done: ${job.images.length} image(s), batch of ${job.batch_size}.`);
    showImages(job);
  } else {
    status(`Job ${job.status}.`);
    if (job.error) showError(job.error);
  }
}

function follow(id, steps) {
  const events = new EventSource(`/v1/jobs/${id}/events`);
  events.addEventListener("started", () => status("Running…"));
  events.addEventListener("progress", (e) => {
    const p = JSON.parse(e.data);
    $("progress").max = p.steps;
    $("progress").value = p.step;
    status(`Step ${p.step} of ${p.steps}`);
  });
  for (const end of ["succeeded", "failed", "canceled"]) {
    events.addEventListener(end, () => { events.close(); finish(id); });
  }
  events.onerror = () => { events.close(); finish(id); };
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
  follow(body.id, body.params.steps);
});
$("model").addEventListener("change", () => { applyDefaults(); showCurl(); });
$("job-form").addEventListener("input", showCurl);
$("copy-curl").addEventListener("click", () => navigator.clipboard?.writeText($("curl").textContent));
loadModels().then(showCurl);
