#!/usr/bin/env node
// Drives the PixelLM page in headless Chromium (playwright-core, system Chromium; no
// browser is ever downloaded) and saves what it produced.
//
//   node web/test/browser-test.mjs --dist web/dist --out DIR --webgpu on|off
//        [--image FILE] [--question Q] [--answer A] [--max-new-tokens N]
//        [--source shapes|tiny | --model-url URL --clip-url URL] [--chromium /usr/bin/chromium]
//        [--chromium-arg FLAG]... [--timeout-s 900] [--smoke]
//
// Without --image/--question the page's bundled example is used; without --answer the
// answer field is cleared (the model generates). --source picks a bundled model (default
// tiny: the conformance kit's, which the test compares with the CLI); --model-url/--clip-url
// (relative to the served dist, or absolute) load from a URL instead.
// --smoke only opens the page, checks that it is idle and reports WebGPU availability.
//
// Writes to DIR: result.json (result without bytes + backend, loadMs, fetchMs, segmentMs,
// streamedText, gpu), mask_00.png..., overlay.png, screenshot.png. Exit 0 on success;
// otherwise 1 with a last line `error: ...`.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from '../serve.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

// WebGPU in headless Chromium on Linux: the API is exposed, but adapters are only
// offered with --enable-unsafe-webgpu (Linux is not on Chrome's WebGPU allowlist).
// Without a GPU, Chromium then falls back to SwiftShader (Vulkan on the CPU).
const WEBGPU_ARGS = {
  on: ['--enable-unsafe-webgpu', '--ignore-gpu-blocklist'],
  // navigator.gpu stays defined, but requestAdapter() resolves to null.
  off: ['--disable-features=WebGPU'],
};

function parseArgs(argv) {
  const opts = {
    dist: path.join(here, '..', 'dist'),
    webgpu: 'on',
    chromium: '/usr/bin/chromium',
    timeoutS: 900,
    chromiumArgs: [],
    smoke: false,
    source: 'tiny',
  };
  const keys = {
    '--dist': 'dist', '--image': 'image', '--question': 'question', '--answer': 'answer',
    '--webgpu': 'webgpu', '--out': 'out', '--chromium': 'chromium', '--timeout-s': 'timeoutS',
    '--max-new-tokens': 'maxNewTokens', '--model-url': 'modelUrl', '--clip-url': 'clipUrl',
    '--source': 'source',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--smoke') opts.smoke = true;
    else if (a === '--chromium-arg') opts.chromiumArgs.push(argv[++i]);
    else if (a === '-h' || a === '--help') {
      console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 18).join('\n'));
      process.exit(0);
    } else if (keys[a] && i + 1 < argv.length) opts[keys[a]] = argv[++i];
    else throw new Error(`unknown or incomplete argument ${a}`);
  }
  if (!(opts.webgpu in WEBGPU_ARGS)) throw new Error('--webgpu must be on or off');
  if (!opts.smoke && !opts.out) throw new Error('--out DIR is required');
  if (!!opts.modelUrl !== !!opts.clipUrl) throw new Error('--model-url and --clip-url go together');
  if (!['shapes', 'tiny'].includes(opts.source)) throw new Error('--source must be shapes or tiny');
  if (opts.image && !fs.existsSync(opts.image)) throw new Error(`no such image: ${opts.image}`);
  if (!fs.existsSync(path.join(opts.dist, 'index.html'))) throw new Error(`${opts.dist}/index.html not found`);
  opts.timeoutS = Number(opts.timeoutS);
  return opts;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const deadline = Date.now() + opts.timeoutS * 1000;
  const left = () => Math.max(1000, deadline - Date.now());

  const server = await serve(opts.dist, 0);
  const url = `http://127.0.0.1:${server.address().port}/?webgpu=${opts.webgpu === 'on' ? 1 : 0}`;
  const args = ['--no-sandbox', ...WEBGPU_ARGS[opts.webgpu], ...opts.chromiumArgs];
  let browser;
  try {
    browser = await chromium.launch({ executablePath: opts.chromium, headless: true, args, timeout: 60_000 });
    console.log(`chromium ${browser.version()} ${args.join(' ')}`);
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('console', (m) => console.log(`[page] ${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => console.log(`[page] uncaught: ${e.message}`));
    page.setDefaultTimeout(left());

    await page.goto(url);
    await page.waitForFunction(() => window.pixellmState?.pageReady, null, { timeout: 60_000 });
    const gpu = await page.evaluate(() => window.pixellmState.gpu);
    console.log(`navigator.gpu: ${gpu.api ? 'yes' : 'no'}; adapter: ${JSON.stringify(gpu.adapter)}`);

    if (opts.smoke) {
      const s = await page.evaluate(() => ({
        status: window.pixellmState.status,
        error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
        image: window.pixellmState.image,
        webgpuChecked: document.getElementById('webgpu').checked,
      }));
      console.log(`page: status ${s.status}, example image ${JSON.stringify(s.image)}, "Use WebGPU" ${s.webgpuChecked ? 'checked' : 'unchecked'}`);
      if (opts.out) {
        fs.mkdirSync(opts.out, { recursive: true });
        fs.writeFileSync(path.join(opts.out, 'smoke.json'), JSON.stringify({ ...s, gpu, args }, null, 2) + '\n');
        await page.screenshot({ path: path.join(opts.out, 'screenshot.png'), fullPage: true });
      }
      if (s.status !== 'idle' || s.error) throw new Error(`page not idle: ${s.status} ${s.error ?? ''}`);
      console.log('smoke: ok');
      return;
    }

    // Always chosen explicitly: the page's default source is not this test's business.
    if (!opts.modelUrl) await page.check(`input[name=source][value=${opts.source}]`);
    if (opts.modelUrl) {
      await page.check('input[name=source][value=url]');
      await page.fill('#model-url', opts.modelUrl);
      await page.fill('#clip-url', opts.clipUrl);
    }
    await page.click('#load');
    const loaded = await waitStatus(page, ['ready', 'error'], left());
    if (loaded.status === 'error') throw new Error(`load failed: ${loaded.error}`);
    console.log(`loaded: backend ${loaded.backend}; load ${loaded.loadMs} ms (+ ${loaded.fetchMs} ms fetching)`);

    if (opts.image) {
      await page.setInputFiles('#image-input', opts.image);
      const name = path.basename(opts.image);
      await page.waitForFunction((n) => window.pixellmState.image?.name === n || window.pixellmState.error, name);
      const err = await page.evaluate(() => window.pixellmState.error);
      if (err) throw new Error(`image: ${err}`);
    }
    if (opts.question !== undefined) await page.fill('#question', opts.question);
    await page.fill('#answer', opts.answer ?? '');
    if (opts.maxNewTokens !== undefined) await page.fill('#max-new-tokens', String(opts.maxNewTokens));

    await page.click('#segment');
    const done = await waitStatus(page, ['done', 'error'], left());
    if (done.status === 'error') throw new Error(`segment failed: ${done.error}`);

    // Bytes cross the page boundary as base64.
    const out = await page.evaluate(() => {
      const s = window.pixellmState;
      const b64 = (bytes) => {
        let bin = '';
        for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
        return btoa(bin);
      };
      return {
        json: JSON.stringify(s.result, (_k, v) => (v instanceof Uint8Array ? undefined : v)),
        masks: s.result.targets.map((t) => b64(t.mask_png)),
        overlay: b64(s.result.overlay_png),
        meta: { backend: s.backend, loadMs: s.loadMs, fetchMs: s.fetchMs, segmentMs: s.segmentMs, streamedText: s.text, gpu: s.gpu },
      };
    });
    fs.mkdirSync(opts.out, { recursive: true });
    const result = { ...JSON.parse(out.json), ...out.meta };
    fs.writeFileSync(path.join(opts.out, 'result.json'), JSON.stringify(result, null, 2) + '\n');
    out.masks.forEach((m, i) =>
      fs.writeFileSync(path.join(opts.out, `mask_${String(i).padStart(2, '0')}.png`), Buffer.from(m, 'base64')),
    );
    fs.writeFileSync(path.join(opts.out, 'overlay.png'), Buffer.from(out.overlay, 'base64'));
    await page.screenshot({ path: path.join(opts.out, 'screenshot.png'), fullPage: true });

    console.log(`answer: ${JSON.stringify(result.text)}`);
    console.log(`targets: ${result.targets.map((t) => `${t.name} (score ${t.score.toFixed(3)}, ${t.area} px)`).join('; ') || 'none'}`);
    if (result.warnings?.length) console.log(`warnings: ${result.warnings.join('; ')}`);
    console.log(`backend: ${result.backend}`);
    console.log(`load ms: ${result.loadMs}`);
    console.log(`segment ms: ${result.segmentMs}`);
    console.log(`wrote ${opts.out}/{result.json, mask_NN.png x${out.masks.length}, overlay.png, screenshot.png}`);
  } finally {
    await browser?.close().catch(() => {});
    server.close();
  }
}

/** Waits until the page's status is one of `wanted`; returns the state (without bytes). */
async function waitStatus(page, wanted, timeout) {
  try {
    await page.waitForFunction((w) => w.includes(window.pixellmState.status), wanted, { timeout, polling: 500 });
  } catch (e) {
    const s = await page.evaluate(() => window.pixellmState.status).catch(() => '?');
    throw new Error(`timed out waiting for ${wanted.join('/')} (status: ${s})`);
  }
  return page.evaluate(() => {
    const { result, ...rest } = window.pixellmState;
    return rest;
  });
}

main().then(
  () => process.exit(0),
  (e) => {
    console.log(`error: ${String(e?.message ?? e).split('\n')[0]}`);
    process.exit(1);
  },
);
