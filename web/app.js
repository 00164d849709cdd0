// PixelLM demo page: load a model (a bundled one, a URL, or local folders), segment an
// image, show the streamed answer and every target mask over the image.
//
// Plain ES module, no build step. The wasm module (./pkg/pixellm_web.js, wasm-bindgen
// `--target web`) is imported lazily on the first Load, so the page itself works (and
// can be smoke-tested) before the wasm is built.
//
// Test hook: `window.pixellmState` (see `state` below) follows what happens.

const $ = (id) => document.getElementById(id);

/** Observable page state, read by web/test/browser-test.mjs. */
const state = {
  status: 'idle', // 'idle' | 'loading' | 'ready' | 'running' | 'done' | 'error'
  backend: null, // model.backend once loaded
  fetchMs: null, // reading/downloading the model files
  loadMs: null, // WebPixelLm.load: parse, device, weight conversion
  segmentMs: null,
  text: '', // answer streamed so far
  result: null, // the object returned by segment (mask_png as Uint8Array)
  error: null,
  image: null, // {name, width, height} of the chosen image
  gpu: null, // {api, adapter: {vendor, architecture, device, description, isFallbackAdapter} | null}
  pageReady: false, // true once the startup work (GPU probe, example image) is over
};
window.pixellmState = state;

// Same colours, in the same order, as the Rust overlay (pixellm::image::palette), so a
// target looks the same in the canvas and in overlay.png.
const PALETTE = [
  [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [245, 130, 48],
  [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
  [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
  [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128],
];
// The bundled models (scripts/build-web.sh): each folder holds model/, clip/ and
// optionally an example (example.png + example.json).
const BUNDLED = {
  shapes: new URL('./models/shapes/', location.href),
  tiny: new URL('./models/tiny/', location.href),
};
const META_FILES = ['config.json', 'tokenizer.model', 'tokenizer.json', 'added_tokens.json'];

let model = null; // WebPixelLm
let image = null; // {bytes: Uint8Array, name, bitmap: ImageBitmap}
const localDirs = { model: null, clip: null }; // Map(file name -> File) per chosen folder
let view = null; // {bitmap, layers: [canvas], visible: [bool]} of the shown result

// ---------------------------------------------------------------------------------
// Errors and notices: always visible in the page, not only in the console.

let lastPanic = null;
// The wasm side reports Rust panics and its WebGPU fallback through console.log; keep
// them so that an opaque "unreachable" trap can be shown with the panic's message.
const consoleLog = console.log.bind(console);
console.log = (...args) => {
  const first = String(args[0]);
  if (first.startsWith('pixellm panicked')) lastPanic = first;
  else if (first.startsWith('WebGPU unavailable')) showNotice(first);
  consoleLog(...args);
};

function errorMessage(e) {
  let msg = e instanceof Error ? e.message || String(e) : String(e);
  if (e instanceof WebAssembly.RuntimeError && lastPanic) {
    msg = `${lastPanic} (the WebAssembly module is unusable now: reload the page)`;
  }
  return msg;
}

function showError(e) {
  const msg = errorMessage(e);
  state.error = msg;
  setStatus('error');
  const box = $('error');
  box.textContent = msg;
  box.hidden = false;
  console.error(e);
}

function clearError() {
  state.error = null;
  $('error').hidden = true;
  $('error').textContent = '';
}

function showNotice(msg) {
  $('notice').textContent = msg;
  $('notice').hidden = !msg;
}

window.addEventListener('error', (ev) => showError(ev.error ?? ev.message));
window.addEventListener('unhandledrejection', (ev) => showError(ev.reason));

/** Runs a button's async action; errors land in the error box. */
const action = (fn) => () => fn().catch(showError);

function setStatus(s) {
  state.status = s;
  document.body.dataset.status = s;
  const busy = s === 'loading' || s === 'running';
  $('load').disabled = busy;
  $('segment').disabled = busy || !model || !image;
}

// ---------------------------------------------------------------------------------
// Progress bar. Updates are coalesced to one per animation frame: chunks of a large
// download arrive far more often than the page can repaint.

let progressFrame = 0;
function progress(label, done, total) {
  cancelAnimationFrame(progressFrame);
  progressFrame = requestAnimationFrame(() => {
    const bar = $('progress');
    bar.hidden = false;
    bar.max = Math.max(total, 1);
    bar.value = Math.min(done, bar.max);
    const pct = total ? ` (${Math.floor((100 * done) / total)} %)` : '';
    $('progress-text').textContent = `${label}: ${mb(done)} / ${total ? mb(total) : '?'}${pct}`;
  });
}
function progressDone(text) {
  cancelAnimationFrame(progressFrame);
  $('progress').hidden = true;
  $('progress-text').textContent = text;
}
const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

/** Byte counter shared by parallel downloads: total grows as sizes become known. */
function byteTracker(label) {
  let done = 0;
  let total = 0;
  return {
    expect(n) { total += n; progress(label, done, total); },
    advance(n) { done += n; progress(label, done, Math.max(total, done)); },
  };
}

/** Reads a byte stream to one Uint8Array, counting bytes as they arrive. */
async function readAll(stream, expected, tracker) {
  tracker.expect(expected);
  const reader = stream.getReader();
  const chunks = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.length;
    tracker.advance(value.length);
  }
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------
// Model files: from a served directory, or from local folders.

/** Which of a folder's files to hand to the model: metadata plus one set of weights. */
function pickFiles(names) {
  const has = new Set(names);
  const picked = META_FILES.filter((n) => has.has(n));
  const safetensors = names.filter((n) => n.endsWith('.safetensors'));
  // Only pytorch_model*.bin: Hugging Face folders also hold e.g. training_args.bin,
  // which is not a weight file.
  const bins = names.filter((n) => /^pytorch_model.*\.bin$/.test(n));
  const gguf = names.filter((n) => n.endsWith('.gguf'));
  picked.push(...(safetensors.length ? safetensors : bins.length ? bins : gguf).sort());
  return picked;
}

// fetch only says "Failed to fetch": name the URL and the usual causes.
const networkError = (url, e) =>
  new Error(`${url}: ${e.message} (network error, or the server does not allow cross-origin requests)`);

async function fetchOk(url, init) {
  let res;
  try {
    res = await fetch(url, init);
  } catch (e) {
    throw networkError(url, e);
  }
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`);
  return res;
}

/** Fetches JSON; `null` when the file is not there (404/410). */
async function fetchJsonIfAny(url) {
  let res;
  try {
    res = await fetch(url);
  } catch (e) {
    throw networkError(url, e);
  }
  if (res.status === 404 || res.status === 410) return null;
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`);
  try {
    return await res.json();
  } catch (e) {
    throw new Error(`${url}: not valid JSON (${e.message})`);
  }
}

async function exists(url) {
  let res = await fetch(url, { method: 'HEAD' }).catch(() => null);
  if (res && (res.status === 405 || res.status === 501)) {
    // No HEAD on this server: start a GET and drop the body once the status is known.
    const abort = new AbortController();
    res = await fetch(url, { signal: abort.signal }).catch(() => null);
    abort.abort();
  }
  return !!res?.ok;
}

/** File names to fetch from a served model directory. */
async function remoteFileNames(base) {
  const manifest = await fetchJsonIfAny(new URL('manifest.json', base));
  if (manifest) {
    // A manifest lists exactly the files to load.
    if (!Array.isArray(manifest.files)) throw new Error(`${base}manifest.json: expected {"files": [...]}`);
    return manifest.files;
  }
  // No manifest: probe the usual Hugging Face names.
  const url = (n) => new URL(n, base);
  const names = [];
  for (const n of META_FILES) if (await exists(url(n))) names.push(n);
  if (!names.includes('config.json')) {
    throw new Error(`${base}: neither manifest.json nor config.json found there`);
  }
  if (await exists(url('model.safetensors'))) return [...names, 'model.safetensors'];
  const index =
    (await fetchJsonIfAny(url('model.safetensors.index.json'))) ??
    (await fetchJsonIfAny(url('pytorch_model.bin.index.json')));
  if (index) return [...names, ...new Set(Object.values(index.weight_map ?? {}))];
  if (await exists(url('pytorch_model.bin'))) return [...names, 'pytorch_model.bin'];
  throw new Error(`${base}: no weights found (model.safetensors, a *.index.json or pytorch_model.bin)`);
}

/** `{name: Uint8Array}` of a served directory (all files downloaded in parallel). */
async function fetchDir(base, tracker) {
  const names = await remoteFileNames(base);
  const entries = await Promise.all(
    names.map(async (name) => {
      const res = await fetchOk(new URL(name, base));
      const size = Number(res.headers.get('content-length')) || 0;
      return [name, await readAll(res.body, size, tracker)];
    }),
  );
  return Object.fromEntries(entries);
}

/** `{name: Uint8Array}` of a local folder's picked files. */
async function readLocal(files, what, tracker) {
  if (!files?.size) throw new Error(`Choose the ${what} folder first.`);
  const entries = [];
  for (const [name, file] of files) entries.push([name, await readAll(file.stream(), file.size, tracker)]);
  return Object.fromEntries(entries);
}

function dirUrl(text, what) {
  if (!text.trim()) throw new Error(`Enter the ${what} URL.`);
  const u = new URL(text.trim(), location.href);
  if (!u.pathname.endsWith('/')) u.pathname += '/'; // a directory: resolve names inside it
  return u;
}

async function gatherModelFiles(source) {
  const tracker = byteTracker(source === 'local' ? 'Reading files' : 'Downloading');
  if (BUNDLED[source]) {
    const base = BUNDLED[source];
    return Promise.all([fetchDir(new URL('model/', base), tracker), fetchDir(new URL('clip/', base), tracker)]);
  }
  if (source === 'url') {
    const m = dirUrl($('model-url').value, 'PixelLM directory');
    const c = dirUrl($('clip-url').value, 'vision tower directory');
    return Promise.all([fetchDir(m, tracker), fetchDir(c, tracker)]);
  }
  return [await readLocal(localDirs.model, 'PixelLM', tracker), await readLocal(localDirs.clip, 'vision tower', tracker)];
}

/** Keeps the files of one chosen folder (its top level only), picked by `pickFiles`. */
function setLocalDir(which, files) {
  const byName = new Map();
  for (const f of files) {
    // webkitdirectory gives "folder/name" (deeper for subfolders, which are skipped).
    const parts = (f.webkitRelativePath || f.name).split('/');
    if (parts.length <= 2) byName.set(parts.at(-1), f);
  }
  const picked = new Map(pickFiles([...byName.keys()]).map((n) => [n, byName.get(n)]));
  localDirs[which] = picked;
  const total = [...picked.values()].reduce((s, f) => s + f.size, 0);
  $(`${which}-dir-info`).textContent = picked.size
    ? `${[...picked.keys()].join(', ')} (${mb(total)})`
    : 'no model files in that folder';
}

// ---------------------------------------------------------------------------------
// Loading the wasm module and the model.

let wasmPromise = null;
function wasmModule() {
  wasmPromise ??= import('./pkg/pixellm_web.js')
    .then(async (m) => {
      await m.default();
      return m;
    })
    .catch((e) => {
      wasmPromise = null; // let a later Load try again
      throw new Error(`Could not load the WebAssembly module ./pkg/pixellm_web.js (${e.message}); is web/dist built (scripts/build-web.sh)?`);
    });
  return wasmPromise;
}

async function loadModel() {
  clearError();
  showNotice('');
  setStatus('loading');
  if (model) {
    model.free(); // release the old weights before the new ones arrive
    model = null;
  }
  Object.assign(state, { backend: null, fetchMs: null, loadMs: null });
  $('backend').textContent = '–';
  $('load-ms').textContent = '–';
  try {
    const wasm = await wasmModule();
    const source = document.querySelector('input[name=source]:checked').value;
    let t0 = performance.now();
    const [modelFiles, clipFiles] = await gatherModelFiles(source);
    state.fetchMs = Math.round(performance.now() - t0);
    progress('Converting weights', 0, 0);
    t0 = performance.now();
    model = await wasm.WebPixelLm.load(modelFiles, clipFiles, $('webgpu').checked, (done, total) =>
      progress('Converting weights', done, total),
    );
    state.loadMs = Math.round(performance.now() - t0);
    // The browser may hide the adapter's name from wasm; name it from requestAdapter().
    const a = state.gpu?.adapter;
    let backend = model.backend;
    if (backend === 'WebGPU' && a) {
      const name = [a.vendor, a.architecture, a.device, a.description].filter(Boolean).join(' ');
      backend = `WebGPU (${name || 'unnamed adapter'}${a.isFallbackAdapter ? ', software fallback' : ''})`;
    }
    state.backend = backend;
    $('backend').textContent = backend;
    $('load-ms').textContent = `${state.loadMs} ms (+ ${state.fetchMs} ms fetching files)`;
    progressDone('');
    setStatus('ready');
  } catch (e) {
    progressDone('');
    throw e;
  }
}

// ---------------------------------------------------------------------------------
// Image input and the canvas.

async function setImage(bytes, name) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]));
  } catch {
    throw new Error(`${name}: the browser cannot decode this image`);
  }
  image = { bytes, name, bitmap };
  view = null;
  $('image-info').textContent = `${name} (${bitmap.width}×${bitmap.height})`;
  const canvas = $('canvas');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext('2d').drawImage(bitmap, 0, 0);
  state.image = { name, width: bitmap.width, height: bitmap.height };
  clearResult();
  setStatus(state.status); // refresh the buttons
}

async function setImageFile(file) {
  if (file) await setImage(new Uint8Array(await file.arrayBuffer()), file.name);
}

/** A canvas holding one mask in its colour: 50 % fill, solid 1-px outline (as overlay.png). */
async function tintedMask(png, rgb, w, h) {
  const bitmap = await createImageBitmap(new Blob([png], { type: 'image/png' }), {
    colorSpaceConversion: 'none', // keep the grey values as stored
    premultiplyAlpha: 'none',
  });
  const c = document.createElement('canvas');
  c.width = w;
  c.height = h;
  const ctx = c.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0, w, h);
  const px = ctx.getImageData(0, 0, w, h);
  const d = px.data;
  const fg = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) fg[i] = d[i * 4] >= 128 ? 1 : 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!fg[i]) {
        d[i * 4 + 3] = 0;
        continue;
      }
      const edge =
        x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        !fg[i - 1] || !fg[i + 1] || !fg[i - w] || !fg[i + w];
      d[i * 4] = rgb[0];
      d[i * 4 + 1] = rgb[1];
      d[i * 4 + 2] = rgb[2];
      d[i * 4 + 3] = edge ? 255 : 128;
    }
  }
  ctx.putImageData(px, 0, 0);
  return c;
}

function drawView() {
  const canvas = $('canvas');
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(view.bitmap, 0, 0, canvas.width, canvas.height);
  view.layers.forEach((layer, i) => view.visible[i] && ctx.drawImage(layer, 0, 0));
}

function clearResult() {
  $('legend').replaceChildren();
  $('downloads').replaceChildren();
  $('timings').replaceChildren();
  $('warnings').replaceChildren();
}

const rgbCss = ([r, g, b]) => `rgb(${r} ${g} ${b})`;
const safeName = (s) => s.replace(/[^\w.-]+/g, '_').slice(0, 40) || 'target';

function download(bytesOrText, fileName, type) {
  const url = URL.createObjectURL(new Blob([bytesOrText], { type }));
  const a = Object.assign(document.createElement('a'), { href: url, download: fileName });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function button(text, onClick) {
  const b = Object.assign(document.createElement('button'), { type: 'button', textContent: text });
  b.addEventListener('click', onClick);
  return b;
}

/** The result as JSON, without the PNG byte arrays. */
const resultJson = (result) =>
  JSON.stringify(result, (_k, v) => (v instanceof Uint8Array ? undefined : v), 2);

async function showResult(result) {
  const { width: w, height: h, targets } = result;
  const canvas = $('canvas');
  canvas.width = w;
  canvas.height = h;
  const layers = await Promise.all(targets.map((t, i) => tintedMask(t.mask_png, PALETTE[i % PALETTE.length], w, h)));
  view = { bitmap: image.bitmap, layers, visible: layers.map(() => true) };
  drawView();

  const legend = $('legend');
  targets.forEach((t, i) => {
    const li = document.createElement('li');
    const toggle = Object.assign(document.createElement('input'), { type: 'checkbox', checked: true });
    toggle.addEventListener('change', () => {
      view.visible[i] = toggle.checked;
      drawView();
    });
    const swatch = Object.assign(document.createElement('span'), { className: 'swatch' });
    swatch.style.background = rgbCss(PALETTE[i % PALETTE.length]);
    const label = document.createElement('label');
    label.append(toggle, swatch, ` ${t.name}`);
    const facts = Object.assign(document.createElement('span'), {
      className: 'hint',
      textContent: ` score ${t.score.toFixed(3)} · ${t.area} px`,
    });
    const file = `mask_${String(i).padStart(2, '0')}_${safeName(t.name)}.png`;
    li.append(label, facts, ' ', button('mask PNG', () => download(t.mask_png, file, 'image/png')));
    legend.append(li);
  });
  if (!targets.length) legend.append(Object.assign(document.createElement('li'), { textContent: 'No targets.' }));

  $('downloads').append(
    button('Result JSON', () => download(resultJson(result), 'result.json', 'application/json')),
    button('Overlay PNG', () => download(result.overlay_png, 'overlay.png', 'image/png')),
  );

  const rows = Object.entries(result.timings_ms ?? {}).map(([stage, ms]) => {
    const tr = document.createElement('tr');
    tr.append(
      Object.assign(document.createElement('td'), { textContent: stage }),
      Object.assign(document.createElement('td'), { textContent: `${Number(ms).toFixed(1)} ms` }),
    );
    return tr;
  });
  $('timings').append(...rows);
  $('warnings').append(
    ...(result.warnings ?? []).map((w) => Object.assign(document.createElement('li'), { textContent: w })),
  );
}

async function segment() {
  clearError();
  if (!model) throw new Error('Load a model first.');
  if (!image) throw new Error('Choose an image first.');
  // Passed as typed (not trimmed): a forced answer must reach the model verbatim.
  const question = $('question').value;
  if (!question.trim()) throw new Error('Enter a question.');
  const answer = $('answer').value.trim() ? $('answer').value : undefined;
  const maxNewTokens = Number($('max-new-tokens').value);
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) {
    throw new Error('Max new tokens must be a whole number ≥ 1.');
  }
  Object.assign(state, { text: '', result: null, segmentMs: null });
  $('answer-text').value = '';
  $('segment-ms').textContent = '';
  clearResult();
  setStatus('running');
  const t0 = performance.now();
  const result = await model.segment(image.bytes, question, answer, maxNewTokens, (piece) => {
    state.text += piece;
    $('answer-text').value = state.text;
  });
  state.segmentMs = Math.round(performance.now() - t0);
  // The final text is authoritative (the stream may split or trim differently).
  $('answer-text').value = result.text;
  $('segment-ms').textContent = `${state.segmentMs} ms`;
  state.result = result;
  await showResult(result);
  setStatus('done');
}

// ---------------------------------------------------------------------------------
// Drag and drop.

/** Files of a drop: the top-level files of dropped folders, and dropped files. */
async function droppedFiles(dataTransfer) {
  // Entries must be taken synchronously: the DataTransfer is emptied after the event.
  const entries = [...dataTransfer.items].map((it) => it.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length) return [...dataTransfer.files];
  const asFile = (entry) => new Promise((ok, fail) => entry.file(ok, fail));
  const files = [];
  for (const entry of entries) {
    if (entry.isFile) {
      files.push(await asFile(entry));
      continue;
    }
    const reader = entry.createReader();
    // readEntries returns the listing in batches; an empty batch ends it.
    for (;;) {
      const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (!batch.length) break;
      for (const e of batch) if (e.isFile) files.push(await asFile(e));
    }
  }
  return files;
}

function dropZone(zone, onFiles) {
  zone.addEventListener('dragover', (ev) => {
    ev.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (ev) => {
    ev.preventDefault();
    zone.classList.remove('over');
    const files = droppedFiles(ev.dataTransfer); // starts synchronously, see above
    action(async () => onFiles(await files))();
  });
}

// ---------------------------------------------------------------------------------
// Startup.

function showSource() {
  const source = document.querySelector('input[name=source]:checked').value;
  for (const pane of document.querySelectorAll('.source-pane')) pane.hidden = pane.dataset.source !== source;
}

/** Checks for a WebGPU adapter, so that the checkbox starts in a state that can work. */
async function probeGpu(forced) {
  const info = $('gpu-info');
  if (!navigator.gpu) {
    state.gpu = { api: false, adapter: null };
    info.textContent = 'this browser has no WebGPU (navigator.gpu)';
    return;
  }
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (e) {
    console.warn('requestAdapter failed', e);
  }
  if (!adapter) {
    state.gpu = { api: true, adapter: null };
    info.textContent = 'navigator.gpu is there, but no WebGPU adapter';
    if (forced === null) $('webgpu').checked = false;
    return;
  }
  const a = adapter.info ?? {};
  state.gpu = {
    api: true,
    adapter: {
      vendor: a.vendor,
      architecture: a.architecture,
      device: a.device,
      description: a.description,
      isFallbackAdapter: a.isFallbackAdapter ?? adapter.isFallbackAdapter ?? null,
    },
  };
  const name = [a.vendor, a.architecture, a.description].filter(Boolean).join(' ') || 'unnamed';
  info.textContent = `adapter: ${name}${state.gpu.adapter.isFallbackAdapter ? ' (software fallback)' : ''}`;
}

/** Preselects the example image and question/answer of the default bundled model. */
async function loadExample() {
  try {
    const base = BUNDLED[document.querySelector('input[name=source]:checked').value] ?? BUNDLED.tiny;
    const ex = await fetchJsonIfAny(new URL('example.json', base));
    const res = await fetch(new URL('example.png', base));
    if (!res.ok || image) return; // no example bundled, or the user was quicker
    if (ex?.question) $('question').value = ex.question;
    if (ex?.answer) $('answer').value = ex.answer;
    await setImage(new Uint8Array(await res.arrayBuffer()), 'example.png');
  } catch (e) {
    console.info('no example image', e); // optional: its absence is no error
  }
}

function start() {
  const param = new URLSearchParams(location.search).get('webgpu');
  const forced = param === '1' ? true : param === '0' ? false : null;
  $('webgpu').checked = forced ?? 'gpu' in navigator;

  for (const r of document.querySelectorAll('input[name=source]')) r.addEventListener('change', showSource);
  showSource();
  $('load').addEventListener('click', action(loadModel));
  $('segment').addEventListener('click', action(segment));
  $('image-input').addEventListener('change', action(() => setImageFile($('image-input').files[0])));
  $('model-dir').addEventListener('change', () => setLocalDir('model', $('model-dir').files));
  $('clip-dir').addEventListener('change', () => setLocalDir('clip', $('clip-dir').files));
  dropZone($('model-drop'), (files) => setLocalDir('model', files));
  dropZone($('clip-drop'), (files) => setLocalDir('clip', files));
  dropZone($('image-drop'), (files) => setImageFile(files.find((f) => f.type.startsWith('image/')) ?? files[0]));
  setStatus('idle');
  Promise.all([probeGpu(forced), loadExample()]).finally(() => {
    state.pageReady = true;
  });
}

start();
