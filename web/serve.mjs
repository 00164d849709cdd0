#!/usr/bin/env node
// A tiny static file server for the PixelLM page (Node's http module only).
//
//   node web/serve.mjs [--dir web/dist] [--port 8080]
//
// Binds 127.0.0.1 only. WebAssembly must be served as application/wasm for
// `WebAssembly.instantiateStreaming`, which wasm-bindgen's `init()` uses.
// `serve(dir, port)` is exported so the browser test can reuse it (port 0 = random).

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.webp': 'image/webp',
  '.bmp': 'image/bmp',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
  '.safetensors': 'application/octet-stream',
  '.bin': 'application/octet-stream',
  '.model': 'application/octet-stream',
  '.gguf': 'application/octet-stream',
};

/** Starts serving `dir` on 127.0.0.1:`port`; resolves to the listening http.Server. */
export function serve(dir, port = 8080) {
  const root = path.resolve(dir);
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return send(res, 405, 'method not allowed\n');
    }
    let rel;
    try {
      rel = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      return send(res, 400, 'bad path\n');
    }
    if (rel.includes('\0')) return send(res, 400, 'bad path\n');
    // Resolve and check containment: `..` segments (also encoded ones, decoded above)
    // must not lead outside the served directory.
    let file = path.resolve(root, '.' + path.posix.normalize('/' + rel));
    if (file !== root && !file.startsWith(root + path.sep)) {
      return send(res, 403, 'forbidden\n');
    }
    fs.stat(file, (err, st) => {
      if (!err && st.isDirectory()) {
        file = path.join(file, 'index.html');
        return fs.stat(file, (err2, st2) => reply(err2, st2));
      }
      reply(err, st);
    });

    function reply(err, st) {
      if (err || !st.isFile()) return send(res, 404, 'not found\n');
      const type = MIME[path.extname(file).toLowerCase()] || 'application/octet-stream';
      res.writeHead(200, {
        'Content-Type': type,
        'Content-Length': st.size,
        // The page is rebuilt often during development; never serve a stale wasm.
        'Cache-Control': 'no-cache',
      });
      if (req.method === 'HEAD') return res.end();
      fs.createReadStream(file)
        .on('error', () => res.destroy())
        .pipe(res);
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

function send(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.end(body);
}

export function serverUrl(server) {
  return `http://127.0.0.1:${server.address().port}/`;
}

// Run as a script (not when imported by the test runner).
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = args.indexOf(name);
    return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
  };
  const here = path.dirname(fileURLToPath(import.meta.url));
  const dir = opt('--dir', path.join(here, 'dist'));
  const port = Number(opt('--port', '8080'));
  if (!fs.existsSync(dir)) {
    console.error(`error: ${dir} does not exist (build it with scripts/build-web.sh)`);
    process.exit(1);
  }
  serve(dir, port).then(
    (server) => console.log(`serving ${path.resolve(dir)} at ${serverUrl(server)}`),
    (e) => {
      console.error(`error: ${e.message}`);
      process.exit(1);
    },
  );
}
