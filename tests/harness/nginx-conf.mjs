#!/usr/bin/env node
// Writes the nginx configuration of the test load balancer (browser tests,
// JavaScript client tests).
//
//   node nginx-conf.mjs --prefix DIR --listen PORT --upstream 127.0.0.1:A --upstream 127.0.0.1:B [--template docker/nginx.conf]
//
// With a template (the project's docker/nginx.conf) it keeps everything and
// replaces only what the deployment config and a test run must differ in:
//   - the lines between `# BEGIN UPSTREAM SERVERS` / `# END UPSTREAM SERVERS`
//     become one `server 127.0.0.1:P;` line per upstream;
//   - `listen 8080;` becomes `listen 127.0.0.1:PORT;` (IPv6 listens are dropped);
//   - the lines between `# BEGIN RUNTIME PATHS` / `# END RUNTIME PATHS` become
//     pid/error_log (main context) or access_log/*_temp_path (http context)
//     under the prefix;
//   - top-level `user` and `daemon` directives are dropped (the test runs as
//     root in the foreground) and missing runtime paths are added.
// Without a template it writes a minimal config that does the same job.
import fs from 'node:fs';
import path from 'node:path';

const args = process.argv.slice(2);
const get = (name) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1] : undefined; };
const all = (name) => args.flatMap((a, i) => (a === `--${name}` ? [args[i + 1]] : []));

const prefix = path.resolve(get('prefix') || '.');
const listen = Number(get('listen'));
const upstreams = all('upstream');
const template = get('template');
// Development aid (RELAY_WEB_FROM_DISK=1 in run.sh): serve the page's
// files from this directory instead of the copies embedded in the binary, and
// put a "front" server (LISTEN=UPSTREAM) before each node with the same files.
const staticDir = get('static') ? path.resolve(get('static')) : null;
const fronts = all('front').map((f) => { const [l, u] = f.split('='); return { listen: Number(l), upstream: u }; });
const out = get('out') || path.join(prefix, 'nginx.conf');
if (!listen || upstreams.length === 0) {
  console.error('usage: nginx-conf.mjs --prefix DIR --listen PORT --upstream HOST:PORT... [--template FILE] [--out FILE]');
  process.exit(2);
}
for (const d of ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) fs.mkdirSync(path.join(prefix, 'temp', d), { recursive: true });

const P = (f) => path.join(prefix, f);
const mainPaths = [`pid ${P('nginx.pid')};`, `error_log ${P('error.log')} info;`];
const httpPaths = [
  `access_log ${P('access.log')};`,
  `client_body_temp_path ${P('temp/client_body')};`,
  `proxy_temp_path ${P('temp/proxy')};`,
  `fastcgi_temp_path ${P('temp/fastcgi')};`,
  `uwsgi_temp_path ${P('temp/uwsgi')};`,
  `scgi_temp_path ${P('temp/scgi')};`,
];
const serverLines = upstreams.map((u) => `server ${u};`);

function staticLocations(indent) {
  if (!staticDir) return [];
  const types = 'types { text/html html; text/javascript js; text/css css; }';
  return [
    `location = / { root ${staticDir}; ${types} try_files /index.html =404; add_header Cache-Control no-cache; }`,
    `location = /index.html { root ${staticDir}; ${types} add_header Cache-Control no-cache; }`,
    `location = /style.css { root ${staticDir}; ${types} add_header Cache-Control no-cache; }`,
    `location /app/ { root ${staticDir}; ${types} add_header Cache-Control no-cache; }`,
    `location /lib/ { root ${staticDir}; ${types} add_header Cache-Control no-cache; }`,
  ].map((l) => indent + l);
}

function frontServers() {
  return fronts.map((f) => `
    server {
        listen 127.0.0.1:${f.listen};
${staticLocations('        ').join('\n')}
        location / {
            proxy_pass http://${f.upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
            proxy_buffering off;
        }
    }`).join('\n');
}

function fromTemplate(text) {
  const lines = text.split('\n');
  const outLines = [];
  let depth = 0;
  let skipping = null;
  let listenDone = false;
  let httpOpenIndex = -1;
  let sawMainPaths = false;
  let sawHttpPaths = false;
  for (const line of lines) {
    const trimmed = line.trim();
    const indent = line.slice(0, line.length - line.trimStart().length);
    if (skipping) {
      if (new RegExp(`^#\\s*END ${skipping}\\b`).test(trimmed)) {
        skipping = null;
        outLines.push(line);
      }
      continue;
    }
    if (/^#\s*BEGIN UPSTREAM SERVERS\b/.test(trimmed)) {
      outLines.push(line, ...serverLines.map((s) => indent + s));
      skipping = 'UPSTREAM SERVERS';
      continue;
    }
    if (/^#\s*BEGIN RUNTIME PATHS\b/.test(trimmed)) {
      if (depth === 0) { outLines.push(line, ...mainPaths.map((s) => indent + s)); sawMainPaths = true; }
      else { outLines.push(line, ...httpPaths.map((s) => indent + s)); sawHttpPaths = true; }
      skipping = 'RUNTIME PATHS';
      continue;
    }
    const code = trimmed.replace(/#.*$/, '');
    if (depth === 0 && /^(user|daemon)\s[^;]*;/.test(code)) continue;
    if (/^listen\s/.test(code)) {
      if (/^listen\s+\[/.test(code)) continue; // IPv6
      if (/^listen\s+(?:\S+:)?8080\b/.test(code)) {
        if (listenDone) continue;
        listenDone = true;
        outLines.push(`${indent}listen 127.0.0.1:${listen};`, ...staticLocations(indent));
        continue;
      }
    }
    outLines.push(line);
    if (/^http\s*\{/.test(code) && depth === 0) httpOpenIndex = outLines.length - 1;
    for (const ch of code) {
      if (ch === '{') depth++;
      else if (ch === '}') depth--;
    }
  }
  if (!listenDone) console.error('nginx-conf: warning: no `listen 8080;` found in the template');
  if (!sawHttpPaths && httpOpenIndex >= 0) outLines.splice(httpOpenIndex + 1, 0, ...httpPaths.map((s) => `    ${s}`));
  if (!sawMainPaths) outLines.unshift(...mainPaths);
  if (fronts.length) {
    let last = outLines.length - 1;
    while (last >= 0 && outLines[last].replace(/#.*$/, '').trim() !== '}') last--;
    outLines.splice(last, 0, frontServers());
  }
  return outLines.join('\n');
}

function inline() {
  return `# generated by tests/harness/nginx-conf.mjs (no docker/nginx.conf found)
worker_processes 1;
${mainPaths.join('\n')}
events { worker_connections 1024; }
http {
    ${httpPaths.join('\n    ')}
    map $http_upgrade $connection_upgrade {
        default upgrade;
        ''      close;
    }
    upstream relay {
        ${serverLines.join('\n        ')}
    }
    server {
        listen 127.0.0.1:${listen};
${staticLocations('        ').join('\n')}
        location / {
            proxy_pass http://relay;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_buffering off;
            proxy_next_upstream error timeout http_502 http_503;
        }
    }
${frontServers()}
}
`;
}

const conf = template && fs.existsSync(template) ? fromTemplate(fs.readFileSync(template, 'utf8')) : inline();
fs.writeFileSync(out, conf);
console.log(out);
