// Headless-browser acceptance tests of the web console (/ui/), against the real gateway.
//
// Starts the gateway binary (IGW_BIN, default target/debug/incident-gateway) on a config of its
// own in a temp folder (SQLite, an admin token, one source, one HTTP connector posting to a
// receiver in this script), then drives Debian's Chromium through playwright-core as an admin
// would: sign in, find an incident and its delivery, replay a dead delivery, preview a template
// and see the line a broken one fails on. Each step says what it expected and what it saw.
//
// Usage: node tests/browser/console.mjs [--screenshots DIR]   (or IGW_SCREENSHOTS=DIR)
// Environment: IGW_BIN (the binary), CHROMIUM (the browser, default /usr/bin/chromium),
// IGW_BROWSER_HEADED=1 (watch it), IGW_KEEP_TMP=1 (keep the temp folder even when all pass).
// Exits 0 when every step passed; otherwise names the failed steps, prints the end of the
// gateway's log and keeps the temp folder (config, log, a screenshot per failed step).

import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

function screenshotsArg() {
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--screenshots') {
      if (!args[i + 1]) usage('--screenshots needs a folder');
      return args[i + 1];
    }
    if (args[i].startsWith('--screenshots=')) return args[i].slice('--screenshots='.length);
    usage(`unknown argument ${args[i]}`);
  }
  return process.env.IGW_SCREENSHOTS || null;
}

function usage(message) {
  console.error(`${message}\nusage: node tests/browser/console.mjs [--screenshots DIR]`);
  process.exit(2);
}

const shotsDir = (() => {
  const dir = screenshotsArg();
  return dir ? path.resolve(process.cwd(), dir) : null;
})();
const binary = path.resolve(root, process.env.IGW_BIN || 'target/debug/incident-gateway');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const templatePath = path.join(root, 'templates', 'generic', 'incident.json.hbs');
const samplePath = path.join(root, 'examples', 'incidents', 'sample.json');
const viewport = { width: 1280, height: 800 };
const connector = 'browser-hook';
const adminToken = `browser-admin-${randomBytes(12).toString('hex')}`;
const sourceKey = `browser-source-${randomBytes(12).toString('hex')}`;

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

class StepFailure extends Error {}

function fail(message) {
  throw new StepFailure(message);
}

function check(condition, message) {
  if (!condition) fail(message);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Calls `probe` until it returns something truthy (its value is returned) or `ms` pass. */
async function poll(ms, probe, describe, interval = 250) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= deadline) {
      const seen = last instanceof Error ? last.message.split('\n')[0] : JSON.stringify(last);
      fail(`${typeof describe === 'function' ? await describe() : describe} (waited ${ms / 1000} s; last seen: ${seen})`);
    }
    await sleep(interval);
  }
}

const norm = (s) => (s ?? '').replace(/\s+/g, ' ').trim();

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A TOML basic string: JSON's escapes are TOML's; `$` is doubled (the config's `$$`). */
const toml = (s) => JSON.stringify(s).replaceAll('$', '$$$$');

// ---------------------------------------------------------------------------------------------
// The receiver: the connector's target. Records what it got; answers 400 while `failing`.
// ---------------------------------------------------------------------------------------------

function startReceiver() {
  const receiver = { got: [], failing: false, server: null, url: null };
  receiver.server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      let json = null;
      try {
        json = JSON.parse(body);
      } catch {
        /* recorded as text */
      }
      const failing = receiver.failing;
      receiver.got.push({ method: req.method, path: req.url, headers: req.headers, body, json, answered: failing ? 400 : 200 });
      res.writeHead(failing ? 400 : 200, { 'content-type': 'application/json' });
      res.end(failing ? '{"error":"receiver told to fail by the browser test"}' : '{"ok":true}');
    });
  });
  return new Promise((resolve, reject) => {
    receiver.server.on('error', reject);
    receiver.server.listen(0, '127.0.0.1', () => {
      receiver.url = `http://127.0.0.1:${receiver.server.address().port}/hook`;
      resolve(receiver);
    });
  });
}

/** The incident ids the receiver answered 200 for. */
const delivered = (receiver) => receiver.got.filter((r) => r.answered === 200).map((r) => r.json?.incidentId);

// ---------------------------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------------------------

async function startGateway(tmp, receiverUrl) {
  check(fs.existsSync(binary), `no gateway binary at ${binary}: build it (cargo build --bin incident-gateway) or set IGW_BIN`);
  check(fs.existsSync(templatePath), `no template at ${templatePath}`);
  const port = await freePort();
  const config = path.join(tmp, 'gateway.toml');
  // The template beside the config, named relatively, as an admin's would be (the preview
  // shows the path as the config writes it).
  fs.mkdirSync(path.join(tmp, 'templates'), { recursive: true });
  fs.copyFileSync(templatePath, path.join(tmp, 'templates', 'incident.json.hbs'));
  // The connector gives up fast: a 4xx but 408/425/429 is dead at once, and a retry schedule
  // of one second within two keeps anything else from lingering.
  fs.writeFileSync(
    config,
    `[server]
listen = ${toml(`127.0.0.1:${port}`)}
admin_token = ${toml(adminToken)}

[storage]
url = ${toml(`sqlite://${path.join(tmp, 'gw.db')}`)}

[[sources]]
name = "detector"
api_key = ${toml(sourceKey)}

[[connectors]]
name = ${toml(connector)}
kind = "http"
url = ${toml(receiverUrl)}
template = "templates/incident.json.hbs"
timeout = "2s"
[connectors.retry]
schedule = ["1s"]
max_age = "2s"
`,
  );
  const logPath = path.join(tmp, 'gateway.log');
  const log = fs.openSync(logPath, 'a');
  const env = { ...process.env, IGW_LOG: process.env.IGW_LOG || 'info' };
  delete env.IGW_CONFIG;
  const child = spawn(binary, ['serve', '--config', config], { stdio: ['ignore', log, log], env });
  fs.closeSync(log);
  const gateway = { child, port, base: `http://127.0.0.1:${port}`, config, logPath, exited: null };
  child.on('exit', (code, signal) => {
    gateway.exited = { code, signal };
  });
  child.on('error', (e) => {
    gateway.exited = { error: e.message };
  });
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (gateway.exited) fail(`the gateway exited before it was ready (${JSON.stringify(gateway.exited)})`);
    try {
      const r = await fetch(`${gateway.base}/readyz`);
      if (r.status === 200) return gateway;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) fail(`GET /readyz did not answer 200 within 30 s`);
    await sleep(100);
  }
}

async function stopGateway(gateway) {
  if (!gateway || gateway.exited) return;
  const exited = new Promise((resolve) => gateway.child.once('exit', resolve));
  gateway.child.kill('SIGTERM');
  const timer = setTimeout(() => gateway.child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

function logTail(logPath, lines = 40) {
  try {
    return fs.readFileSync(logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** A new incident: the sample with a fresh id. Returns the 202 body. */
async function postIncident(gateway, id) {
  const incident = JSON.parse(fs.readFileSync(samplePath, 'utf8'));
  incident.incidentId = id;
  const r = await fetch(`${gateway.base}/v1/incidents`, {
    method: 'POST',
    headers: { authorization: `Bearer ${sourceKey}`, 'content-type': 'application/json' },
    body: JSON.stringify(incident),
  });
  const text = await r.text();
  check(r.status === 202, `POST /v1/incidents answered ${r.status}, not 202: ${text.slice(0, 300)}`);
  const body = JSON.parse(text);
  const delivery = (body.deliveries || []).find((d) => d.connector === connector);
  check(delivery, `POST /v1/incidents made no delivery to ${connector}: ${text.slice(0, 300)}`);
  return delivery;
}

async function admin(gateway, pathAndQuery) {
  const r = await fetch(`${gateway.base}${pathAndQuery}`, { headers: { authorization: `Bearer ${adminToken}` } });
  const text = await r.text();
  check(r.status === 200, `GET ${pathAndQuery} answered ${r.status}: ${text.slice(0, 300)}`);
  return JSON.parse(text);
}

/** Waits until the admin API lists the delivery with `status`; returns it. */
function deliveryWithStatus(gateway, incidentId, deliveryId, status, ms) {
  return poll(
    ms,
    async () => {
      const { deliveries } = await admin(gateway, `/v1/deliveries?status=${status}&incident=${encodeURIComponent(incidentId)}`);
      return deliveries.find((d) => d.id === deliveryId);
    },
    `the admin API never listed delivery ${deliveryId} as ${status}`,
  );
}

// ---------------------------------------------------------------------------------------------
// Page helpers
// ---------------------------------------------------------------------------------------------

async function shot(page, name) {
  if (!shotsDir) return;
  fs.mkdirSync(shotsDir, { recursive: true });
  await page.evaluate(() => window.scrollTo(0, 0)); // a focused field may have scrolled the page
  await page.screenshot({ path: path.join(shotsDir, name) });
  console.log(`    screenshot ${path.join(shotsDir, name)}`);
}

/** Waits for the page's h1 to read `text` (a string: exactly, whitespace folded; a RegExp: matching). */
function expectH1(page, text, ms = 5000) {
  return poll(
    ms,
    async () => {
      const h1s = (await page.locator('h1').allTextContents()).map(norm);
      return h1s.some((h) => (text instanceof RegExp ? text.test(h) : h === text)) && h1s;
    },
    async () => `expected an h1 ${text instanceof RegExp ? `matching ${text}` : `"${text}"`} at ${page.url()}, found ${JSON.stringify((await page.locator('h1').allTextContents()).map(norm))}`,
  );
}

const consoleNav = (page) => page.getByRole('navigation', { name: 'Console' });

async function goByNav(page, link, h1) {
  const nav = consoleNav(page);
  check((await nav.count()) === 1, `expected one navigation landmark named "Console" at ${page.url()}, found ${await nav.count()}`);
  const a = nav.getByRole('link', { name: link, exact: true });
  check((await a.count()) === 1, `expected a link "${link}" in the Console navigation at ${page.url()}, found ${await a.count()}`);
  await a.click();
  await expectH1(page, h1);
}

/**
 * Waits until the page has had no request of its own under way (htmx marks the element that
 * made one with the class `htmx-request`) for half a second, up to 10 s.
 */
async function settled(page) {
  let quietSince = Date.now();
  await poll(
    10_000,
    async () => {
      if ((await page.locator('.htmx-request').count()) > 0) quietSince = Date.now();
      return Date.now() - quietSince >= 500;
    },
    `the page at ${page.url()} never stopped loading`,
    100,
  );
}

/** The text of every `role=status` element (a live region the console updates). */
const statusTexts = async (page) => (await page.getByRole('status').allTextContents()).map(norm);

/**
 * In `section`, every table with a header cell "Status": for each of its own body rows the
 * row's whole text and the text of its cell in that column.
 */
function statusColumns(section) {
  return section.evaluate((el) => {
    const fold = (s) => (s || '').replace(/\s+/g, ' ').trim();
    const found = [];
    for (const table of el.querySelectorAll('table')) {
      const head = table.tHead?.rows[0] ?? table.rows[0];
      if (!head) continue;
      const col = [...head.cells].findIndex((c) => fold(c.textContent) === 'Status');
      if (col < 0) continue;
      const rows = [...table.tBodies].flatMap((b) => [...b.rows]).filter((r) => r !== head && r.cells.length > col);
      found.push(rows.map((r) => ({ row: [...r.cells].map((c) => fold(c.textContent)).join(' | '), status: fold(r.cells[col].textContent) })));
    }
    return found;
  });
}

// ---------------------------------------------------------------------------------------------
// The steps
// ---------------------------------------------------------------------------------------------

async function signIn(ctx) {
  const { page, gateway, context } = ctx;

  // Without a session /ui/ is a 303 to the sign-in page.
  const bare = await fetch(`${gateway.base}/ui/`, { redirect: 'manual' });
  check(bare.status === 303, `GET /ui/ without a session answered ${bare.status}, expected 303`);
  const location = bare.headers.get('location') || '';
  check(new URL(location, gateway.base).pathname === '/ui/signin', `GET /ui/ without a session redirects to "${location}", expected /ui/signin`);

  await page.goto('/ui/');
  check(new URL(page.url()).pathname === '/ui/signin', `opening /ui/ landed on ${page.url()}, expected /ui/signin`);
  await expectH1(page, 'Sign in');
  const field = page.getByLabel('Admin token', { exact: true });
  check((await field.count()) === 1, `expected one field labelled "Admin token" on the sign-in page, found ${await field.count()}`);
  const type = await field.getAttribute('type');
  check(type === 'password', `the "Admin token" field is type=${type}, expected password (the token should not show)`);
  const button = page.getByRole('button', { name: 'Sign in', exact: true });
  check((await button.count()) === 1, `expected one button "Sign in", found ${await button.count()}`);
  await shot(page, 'console-signin.png');

  // A wrong token: the sign-in page again, an alert, and still no session.
  await field.fill(`wrong-${adminToken}`);
  await button.click();
  const alert = await poll(
    5000,
    async () => {
      const texts = (await page.getByRole('alert').allTextContents()).map(norm).filter(Boolean);
      return texts.length > 0 && texts;
    },
    `a wrong token showed no role=alert message (at ${page.url()})`,
  );
  console.log(`    wrong token: alert "${alert.join(' | ')}"`);
  await expectH1(page, 'Sign in');
  await page.goto('/ui/');
  check(new URL(page.url()).pathname === '/ui/signin', `after a wrong token /ui/ opened ${page.url()}: a wrong token gave a session`);

  // The right token: an HttpOnly cookie and the overview.
  await page.getByLabel('Admin token', { exact: true }).fill(adminToken);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await expectH1(page, 'Overview');
  check(new URL(page.url()).pathname === '/ui/', `signing in landed on ${page.url()}, expected /ui/`);
  const cookies = await context.cookies(`${gateway.base}/ui/`);
  check(cookies.length > 0, 'signed in, but the browser holds no cookie');
  const leaky = cookies.filter((c) => !c.httpOnly).map((c) => c.name);
  check(leaky.length === 0, `cookies not HttpOnly: ${leaky.join(', ')} (a session cookie must be HttpOnly)`);
  check(!cookies.some((c) => c.value.includes(adminToken)), 'a cookie holds the admin token itself');

  // The console's navigation on a signed-in page.
  const nav = consoleNav(page);
  check((await nav.count()) === 1, `expected one <nav aria-label="Console">, found ${await nav.count()}`);
  for (const name of ['Overview', 'Incidents', 'Dead letters', 'Template preview']) {
    const n = await nav.getByRole('link', { name, exact: true }).count();
    check(n === 1, `expected one link "${name}" in the Console navigation, found ${n}`);
  }
  const signOut = await page.getByRole('button', { name: 'Sign out', exact: true }).count();
  check(signOut === 1, `expected one button "Sign out" on the overview, found ${signOut}`);
  await shot(page, 'console-overview.png');
}

async function incidentWithDelivery(ctx) {
  const { page, gateway, receiver } = ctx;
  const older = randomUUID().toUpperCase();
  await postIncident(gateway, older);
  await sleep(20); // lists order by time received, in ms: no tie
  const id = randomUUID().toUpperCase();
  const delivery = await postIncident(gateway, id);
  console.log(`    incident ${id}, delivery ${delivery.id}`);

  await page.goto('/ui/');
  await goByNav(page, 'Incidents', 'Incidents');
  const link = page.getByRole('link', { name: id, exact: true });
  check((await link.count()) === 1, `expected one link "${id}" on the incidents page, found ${await link.count()}`);
  const href = await link.getAttribute('href');
  check(
    decodeURIComponent(new URL(href, page.url()).pathname) === `/ui/incidents/${id}`,
    `the incident's link goes to "${href}", expected /ui/incidents/${id}`,
  );
  // Newest first: the incident posted last comes before the one posted just before it.
  const ids = (await page.locator('table a').allTextContents()).map(norm).filter((t) => t === id || t === older);
  check(ids[0] === id && ids[1] === older, `the incidents should be newest first: ${id} before ${older}; the table has ${JSON.stringify(ids)}`);
  await shot(page, 'console-incidents.png');

  await link.click();
  await expectH1(page, new RegExp(`^Incident\\b.*${id}`));
  const sectionFor = () =>
    page.locator('section').filter({ has: page.getByRole('heading', { level: 2, name: `Connector ${connector}` }) });
  check((await sectionFor().count()) >= 1, `the incident page has no <section> with an h2 "Connector ${connector}"`);

  // The delivery goes out within a moment; the page shows it after a reload.
  // The delivery's row: the one naming its id, if the page shows ids; else any row.
  let seen = 'nothing yet';
  const row = await poll(
    10_000,
    async () => {
      const tables = await statusColumns(sectionFor().first());
      const rows = tables.flat();
      const own = rows.filter((r) => r.row.includes(delivery.id));
      const candidates = own.length ? own : rows;
      seen = tables.length ? JSON.stringify(candidates.map((r) => r.status)) : 'no table with a "Status" column';
      const done = candidates.find((r) => r.status === 'delivered');
      if (done) return done;
      await page.reload();
      await expectH1(page, new RegExp(id));
      return false;
    },
    () => `no delivery row with Status "delivered" in the section "Connector ${connector}" (Status cells: ${seen})`,
    500,
  );
  console.log(`    delivery row: "${row.row}"`);
  check(delivered(receiver).includes(id), `the page says delivered but the receiver never got ${id}`);
  await shot(page, 'console-incident.png');
}

async function deadReplayed(ctx) {
  const { page, gateway, receiver } = ctx;
  receiver.failing = true;
  const one = randomUUID().toUpperCase();
  const two = randomUUID().toUpperCase();
  const d1 = await postIncident(gateway, one);
  const d2 = await postIncident(gateway, two);
  console.log(`    dead to be: ${d1.id} (${one}), ${d2.id} (${two})`);
  const dead1 = await deliveryWithStatus(gateway, one, d1.id, 'dead', 20_000);
  await deliveryWithStatus(gateway, two, d2.id, 'dead', 20_000);
  console.log(`    dead, last_error: ${dead1.last_error}`);

  await page.goto('/ui/');
  await goByNav(page, 'Dead letters', 'Dead letters');
  for (const [d, incident] of [
    [d1, one],
    [d2, two],
  ]) {
    const row = page.getByRole('row').filter({ hasText: d.id });
    check((await row.count()) === 1, `expected one row for dead delivery ${d.id} on the dead letters page, found ${await row.count()}`);
    const text = norm(await row.textContent());
    for (const [what, want] of [
      ['incident id', incident],
      ['connector', connector],
      ['reason (the receiver\'s 400)', '400'],
    ]) {
      check(text.includes(want), `the dead letter row of ${d.id} does not show its ${what} "${want}": "${text}"`);
    }
    const box = page.getByLabel(`Select ${d.id}`, { exact: true });
    check((await box.count()) === 1, `expected a checkbox labelled "Select ${d.id}", found ${await box.count()}`);
    const replay = page.getByRole('button', { name: `Replay ${d.id}`, exact: true });
    check((await replay.count()) === 1, `expected a button "Replay ${d.id}", found ${await replay.count()}`);
  }
  for (const name of ['Replay selected', 'Replay all matching']) {
    const n = await page.getByRole('button', { name, exact: true }).count();
    check(n === 1, `expected one button "${name}" on the dead letters page, found ${n}`);
  }
  await shot(page, 'console-dead-letters.png');

  receiver.failing = false;

  // One, by its own button.
  await page.getByRole('button', { name: `Replay ${d1.id}`, exact: true }).click();
  const progress1 = await poll(
    15_000,
    async () => (await statusTexts(page)).find((t) => /delivered 1\b/.test(t)),
    async () => `after "Replay ${d1.id}" no role=status says "delivered 1" (status regions: ${JSON.stringify(await statusTexts(page))})`,
  );
  console.log(`    single replay: "${progress1}"`);
  await poll(5000, () => delivered(receiver).includes(one), `the receiver never got the replayed incident ${one}`);
  await poll(
    10_000,
    async () => (await statusTexts(page)).find((t) => /\bDone\b/.test(t)),
    async () => `the replay's progress never said "Done" (status regions: ${JSON.stringify(await statusTexts(page))})`,
  );

  // The other, by its checkbox and "Replay selected".
  await page.goto('/ui/dead');
  await expectH1(page, 'Dead letters');
  check((await page.getByRole('row').filter({ hasText: d1.id }).count()) === 0, `the replayed delivery ${d1.id} is still listed as dead`);
  await page.getByLabel(`Select ${d2.id}`, { exact: true }).check();
  await page.getByRole('button', { name: 'Replay selected', exact: true }).click();
  const progress2 = await poll(
    15_000,
    async () => (await statusTexts(page)).find((t) => /delivered 1\b/.test(t) && /\b1 of 1\b/.test(t)),
    async () => `after "Replay selected" no role=status says "1 of 1 … delivered 1" (status regions: ${JSON.stringify(await statusTexts(page))})`,
  );
  console.log(`    selected replay: "${progress2}"`);
  await poll(5000, () => delivered(receiver).includes(two), `the receiver never got the replayed incident ${two}`);
  await deliveryWithStatus(gateway, two, d2.id, 'delivered', 5000);
}

async function templatePreview(ctx) {
  const { page, receiver } = ctx;
  await page.goto('/ui/');
  await goByNav(page, 'Template preview', 'Template preview');

  for (const label of ['Connector', 'Event', 'Example incident', 'Incident JSON', 'Template']) {
    const n = await page.getByLabel(label, { exact: true }).count();
    check(n === 1, `expected one control labelled "${label}" on the preview page, found ${n}`);
  }
  // Each change reloads the form (and the Template) for the choice: wait for that to land,
  // or an edit typed meanwhile is replaced by the reloaded form.
  await page.getByLabel('Connector', { exact: true }).selectOption(connector);
  await settled(page);
  await page.getByLabel('Event', { exact: true }).selectOption('created');
  await settled(page);
  check(
    new URL(page.url()).searchParams.get('connector') === connector || !new URL(page.url()).search,
    `after choosing connector ${connector} the preview's address is ${page.url()}`,
  );

  const templateBox = page.getByLabel('Template', { exact: true });
  const shipped = fs.readFileSync(templatePath, 'utf8');
  await poll(
    5000,
    async () => norm(await templateBox.inputValue()) === norm(shipped),
    async () => `the Template textarea does not hold ${path.basename(templatePath)}: ${JSON.stringify((await templateBox.inputValue()).slice(0, 200))}`,
  );

  const output = page.getByRole('region', { name: 'Rendered request', exact: true });
  check((await output.count()) === 1, `expected one region named "Rendered request", found ${await output.count()}`);
  await poll(
    5000,
    async () => {
      const text = await output.textContent();
      return text.includes('POST') && text.includes(receiver.url) && text.includes('"incidentId"');
    },
    async () => `the "Rendered request" region does not show POST ${receiver.url} and the body: ${JSON.stringify(norm(await output.textContent()).slice(0, 300))}`,
  );
  await shot(page, 'console-preview.png');

  // Line 3 opens a block that is never closed: the alert names the file and a line.
  await templateBox.fill('{\n  "a": 1,\n  {{#if incident.summary}}\n}');
  const alert = await poll(
    5000,
    async () => (await page.getByRole('alert').allTextContents()).map(norm).find((t) => t.includes('incident.json.hbs')),
    async () => `a broken template showed no role=alert naming incident.json.hbs (alerts: ${JSON.stringify((await page.getByRole('alert').allTextContents()).map(norm))})`,
  );
  console.log(`    broken template: alert "${alert}"`);
  // "line 3" in words, or the compiler's "incident.json.hbs:3:3".
  const line = /\bline\D{0,3}(\d+)/i.exec(alert) || /incident\.json\.hbs:(\d+)/.exec(alert);
  check(line, `the alert does not name a line ("line N" or "incident.json.hbs:N"): "${alert}"`);
  check(['3', '4'].includes(line[1]), `the alert names line ${line[1]}; the unclosed {{#if}} is on line 3 (its end at line 4): "${alert}"`);
  await shot(page, 'console-preview-error.png');
}

// Keyboard only: the skip link comes first and lands in the main content; the navigation is
// reached with Tab and followed with Enter; focus is visible (an outline) on what has it.
async function keyboardOnly({ page }) {
  await page.goto('/ui/incidents');
  await expectH1(page, 'Incidents');
  const focused = () => page.evaluate(() => {
    const el = document.activeElement;
    const style = el ? getComputedStyle(el) : null;
    return { text: (el?.textContent || '').trim(), id: el?.id || '', outline: style ? style.outlineStyle : 'none' };
  });
  await page.keyboard.press('Tab');
  let f = await focused();
  check(f.text === 'Skip to content', `the first Tab focused ${JSON.stringify(f.text)}, expected the skip link`);
  check(f.outline !== 'none', 'the focused skip link shows no outline');
  await page.keyboard.press('Enter');
  f = await focused();
  check(f.id === 'main', `Enter on the skip link focused #${f.id || '(none)'}, expected #main`);
  await page.goto('/ui/incidents');
  for (let i = 0; i < 4; i++) await page.keyboard.press('Tab');
  f = await focused();
  check(f.text === 'Dead letters', `four Tabs reached ${JSON.stringify(f.text)}, expected the "Dead letters" link`);
  check(f.outline !== 'none', 'the focused link shows no outline');
  await page.keyboard.press('Enter');
  await expectH1(page, 'Dead letters');
  console.log('    skip link → main, Tab ×4 → "Dead letters", Enter → its page; outlines shown');
}

async function signOut(ctx) {
  const { page, gateway } = ctx;
  await page.goto('/ui/');
  await expectH1(page, 'Overview');
  if (shotsDir) {
    // The overview again, now with the run's traffic: its rate chart needs a few samples (one
    // per 10 s), so wait for it, for the screenshot only (up to 30 s; without, the first stays).
    const chart = page.getByRole('img');
    const deadline = Date.now() + 30_000;
    while ((await chart.count()) === 0 && Date.now() < deadline) {
      await sleep(2000);
      await page.reload();
    }
    if ((await chart.count()) > 0) await shot(page, 'console-overview.png');
    else console.log('    the overview drew no chart within 30 s: console-overview.png is the one from signing in');
  }
  await page.getByRole('button', { name: 'Sign out', exact: true }).click();
  await expectH1(page, 'Sign in');
  await page.goto('/ui/incidents');
  check(new URL(page.url()).pathname === '/ui/signin', `after signing out /ui/incidents opened ${page.url()}, expected the sign-in page`);
  check(new URL(gateway.base).host === new URL(page.url()).host, 'signing out left the gateway');
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

const steps = [
  ['a. Sign in', signIn, { required: true }],
  ['b. Incident appears with its delivery', incidentWithDelivery],
  ['c. Dead delivery replayed', deadReplayed],
  ['d. Template preview shows the broken line', templatePreview],
  ['e. Keyboard only', keyboardOnly],
  ['f. Sign out', signOut],
];

async function main() {
  const started = Date.now();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'igw-browser-'));
  const failures = [];
  let receiver;
  let gateway;
  let browser;
  let keep = process.env.IGW_KEEP_TMP === '1';

  const cleanup = async () => {
    await browser?.close().catch(() => {});
    await stopGateway(gateway).catch(() => {});
    receiver?.server.close();
  };
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.once(signal, async () => {
      await cleanup();
      process.exit(130);
    });
  }

  try {
    console.log(`gateway ${binary}\nbrowser ${chromiumPath}\ntemp    ${tmp}`);
    let t = Date.now();
    receiver = await startReceiver();
    gateway = await startGateway(tmp, receiver.url);
    console.log(`gateway ready on ${gateway.base} in ${Date.now() - t} ms (receiver ${receiver.url})`);
    t = Date.now();
    browser = await chromium.launch({
      executablePath: chromiumPath,
      args: ['--no-sandbox'],
      headless: process.env.IGW_BROWSER_HEADED !== '1',
    });
    const context = await browser.newContext({ viewport, baseURL: gateway.base });
    context.setDefaultTimeout(10_000);
    const page = await context.newPage();
    const consoleErrors = [];
    // Script errors and CSP refusals (a 401 or a missing favicon is not one).
    page.on('console', (m) => {
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) consoleErrors.push(`${page.url()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => consoleErrors.push(`${page.url()}: ${e.message}`));
    console.log(`chromium ${browser.version()} up in ${Date.now() - t} ms`);
    const ctx = { page, context, gateway, receiver };

    for (const [name, run, opts = {}] of steps) {
      const t0 = Date.now();
      console.log(`▶ ${name}`);
      try {
        await run(ctx);
        console.log(`✓ ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
      } catch (e) {
        const message = e instanceof StepFailure ? e.message : e.stack || String(e);
        failures.push(`${name}: ${message}`);
        console.log(`✗ ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s): ${message}`);
        const png = path.join(tmp, `failure-${name.replace(/[^A-Za-z0-9]+/g, '-')}.png`);
        await page.screenshot({ path: png }).then(() => console.log(`    page at failure: ${page.url()} → ${png}`)).catch(() => {});
        if (opts.required) {
          console.log('  (the other steps need this one: stopping)');
          break;
        }
      }
    }
    // A script error or a Content-Security-Policy refusal is a defect of the pages.
    if (consoleErrors.length) failures.push(`browser console errors:\n  ${consoleErrors.join('\n  ')}`);
    if (gateway.exited) failures.push(`the gateway exited during the run (${JSON.stringify(gateway.exited)})`);
  } catch (e) {
    failures.push(`setup: ${e instanceof StepFailure ? e.message : e.stack || String(e)}`);
  } finally {
    await cleanup();
  }

  const took = ((Date.now() - started) / 1000).toFixed(1);
  if (failures.length) {
    keep = true;
    const logPath = path.join(tmp, 'gateway.log');
    console.error(`\nthe gateway's log (last lines of ${logPath}):\n${logTail(logPath)}`);
    console.error(`\nFAILED (${took} s): ${failures.length} step(s):\n- ${failures.join('\n- ')}\nkept ${tmp}`);
    process.exitCode = 1;
  } else {
    console.log(`\nall ${steps.length} steps passed in ${took} s`);
  }
  if (!keep) fs.rmSync(tmp, { recursive: true, force: true });
}

await main();
