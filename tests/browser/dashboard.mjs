// Drives the dashboard in Debian's Chromium (playwright-core, no browser
// download) for one scenario of tests/browser/main.rs, which started the real
// api, a worker, NATS and Postgres and checks the outcome on the api's side.
//
//   node dashboard.mjs <scenario>
//   env: FETCHML_BASE (http://127.0.0.1:PORT), FETCHML_KEYS (JSON user -> key),
//        FETCHML_SHOTS (screenshot folder), FETCHML_WEB_APP (web/app, for
//        playwright-core), FETCHML_JOB / FETCHML_MARKER (scenario inputs).
// Prints `result <json>` lines for the Rust side; exits non-zero with the reason
// when an expectation fails. Every wait is on a condition, bounded.
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const require = createRequire(join(process.env.FETCHML_WEB_APP, 'package.json'));
const { chromium } = require('playwright-core');

const BASE = process.env.FETCHML_BASE;
const KEYS = JSON.parse(process.env.FETCHML_KEYS);
const SHOTS = process.env.FETCHML_SHOTS;
const WAIT = 30_000;
mkdirSync(SHOTS, { recursive: true });

function fail(msg) {
  throw new Error(msg);
}
function result(obj) {
  console.log(`result ${JSON.stringify(obj)}`);
}

async function api(path, key, body) {
  const r = await fetch(BASE + path, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) fail(`${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** A fresh browser profile, a page at 1366x768, and a record of everything it received. */
async function open(viewport = { width: 1366, height: 768 }, { record = true } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'fetchml-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.FETCHML_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const received = [];
  const problems = [];
  // Measurements leave out the recording: every stream frame would cross
  // the DevTools protocol into this process, on the same cores as the page.
  if (record) page.on('response', async (r) => {
    try {
      received.push({ url: r.url(), body: await r.text() });
    } catch {
      // A response without a body (a redirect, a 204).
    }
  });
  if (record) page.on('websocket', (ws) => ws.on('framereceived', (f) => received.push({ url: ws.url(), body: String(f.payload) })));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(String(e)));
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { page, received, problems, close };
}

async function signIn(page, user) {
  await page.goto(`${BASE}/`);
  await page.fill('#apikey', KEYS[user]);
  await page.click('button[type=submit]');
  await page.waitForSelector('[data-testid=whoami]', { timeout: WAIT });
  const who = await page.textContent('[data-testid=whoami]');
  if (!who.includes(user)) fail(`signed in as ${user} but the page says ${who}`);
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: false });
}

/** Sequences the page's CSP forbids show up as console errors: none allowed. */
function noProblems(problems) {
  const real = problems.filter((p) => !p.includes('favicon'));
  if (real.length) fail(`the page reported errors: ${real.join(' | ')}`);
}

const scenarios = {
  // Each demo role signs in, sees its pages; a bad key gets a clear error.
  async roles() {
    for (const user of ['alice', 'ana', 'root']) {
      const { page, problems, close } = await open();
      await signIn(page, user);
      await page.waitForSelector('[data-testid=jobs-table], .empty', { timeout: WAIT });
      await shot(page, `jobs-${user}`);
      const hasCancel = (await page.$('[data-testid=bulk-cancel]')) !== null;
      const hasOwnerFilter = (await page.$('text=Owner')) !== null;
      result({ user, hasCancel, hasOwnerFilter });
      for (const [path, name] of [
        ['/experiments', 'experiments'],
        ['/workers', 'workers'],
        ['/dead-letters', 'dead-letters'],
        ['/history', 'history'],
      ]) {
        await page.click(`nav a[href="${path}"]`);
        await page.waitForSelector('h1', { timeout: WAIT });
        await page.waitForLoadState('networkidle', { timeout: WAIT }).catch(() => {});
        if (user === 'root') await shot(page, name);
      }
      if (user === 'root') {
        // The workers page lists the worker the test started.
        await page.click('nav a[href="/workers"]');
        await page.waitForSelector('[data-testid=workers] tbody tr', { timeout: WAIT });
        await shot(page, 'workers');
      }
      await page.click('[data-testid=signout]');
      await page.waitForSelector('#apikey', { timeout: WAIT });
      noProblems(problems);
      await close();
    }
    const { page, close } = await open();
    await page.goto(`${BASE}/`);
    await page.fill('#apikey', 'fml_00000000_0000000000000000000000000000000000000000000000000000000000000000');
    await page.click('button[type=submit]');
    await page.waitForSelector('[data-testid=signin-error]', { timeout: WAIT });
    const text = await page.textContent('[data-testid=signin-error]');
    await shot(page, 'signin-bad-key');
    result({ badKeyError: text });
    await close();
  },

  // A job submitted over HTTP (outside the page) appears without a reload,
  // its logs and chart fill live, and it ends succeeded.
  async live() {
    const { page, problems, close } = await open();
    await signIn(page, 'alice');
    await page.waitForSelector('[data-testid=jobs-table], .empty', { timeout: WAIT });
    // The page's stream is open before the job is queued.
    await page.waitForSelector('.live-dot.open', { timeout: WAIT });
    const script = [
      'for i in 1 2 3 4 5 6 7 8 9 10; do',
      '  echo "training line $i";',
      '  echo "##fetchml {\\"metric\\": \\"loss\\", \\"value\\": $((100 - i * 7)), \\"step\\": $i}";',
      '  echo "##fetchml {\\"percent\\": $((i * 10))}";',
      '  sleep 0.4;',
      'done',
    ].join(' ');
    const { id } = await api('/v1/jobs', KEYS.alice, { command: ['sh', '-c', script], experiment: 'browser-live' });
    result({ submitted: id });
    const row = `tr[data-job="${id}"]`;
    await page.waitForSelector(row, { timeout: WAIT });
    result({ appeared: id });
    // Open it while it runs: logs and the chart grow as it runs.
    await page.click(`${row} a.rowlink`);
    await page.waitForSelector('[data-testid=log-lines]', { timeout: WAIT });
    await page.waitForFunction(() => document.querySelector('[data-testid=log-lines]')?.textContent?.includes('training line'), null, { timeout: WAIT });
    const early = await page.getAttribute('[data-testid="chart-loss"]', 'data-points', { timeout: WAIT }).catch(() => null);
    await page.waitForFunction(() => document.querySelector('[data-testid=log-lines]')?.textContent?.includes('training line 10'), null, { timeout: WAIT });
    await page.waitForFunction(() => document.querySelector('[data-testid="chart-loss"]')?.getAttribute('data-points') === '10', null, { timeout: WAIT });
    await page.waitForSelector('h1 [data-state=succeeded]', { timeout: WAIT });
    await shot(page, 'job');
    result({ earlyChartPoints: early === null ? null : Number(early) });
    // Back on the list, without a reload, the row says succeeded.
    await page.goBack();
    await page.waitForSelector(`${row}[data-state=succeeded]`, { timeout: WAIT });
    // The counts by state follow (GET /v1/jobs/counts, refreshed on events).
    await page.waitForSelector('[data-count=succeeded]', { timeout: WAIT });
    result({ succeededInList: id });
    // A phone-sized view of the same list.
    await page.setViewportSize({ width: 390, height: 844 });
    await shot(page, 'jobs-phone');
    noProblems(problems);
    await close();
  },

  // Cancel from the job page stops the running job (the Rust side checks the process is gone).
  async cancel() {
    const id = process.env.FETCHML_JOB;
    const { page, problems, close } = await open();
    await signIn(page, 'alice');
    await page.goto(`${BASE}/jobs/${id}`);
    await page.waitForSelector('h1 [data-state=running]', { timeout: WAIT });
    await page.click('[data-testid=cancel]');
    await page.click('[data-testid=confirm-yes]');
    await page.waitForSelector('h1 [data-state=cancelled]', { timeout: WAIT });
    await shot(page, 'job-cancelled');
    result({ cancelled: id });
    noProblems(problems);
    await close();
  },

  // The analyst's pages hold no command line, env value or owner: not in the
  // DOM, not in any response or stream frame the page received.
  async analyst() {
    const id = process.env.FETCHML_JOB;
    const marker = process.env.FETCHML_MARKER;
    const { page, received, problems, close } = await open();
    await signIn(page, 'ana');
    await page.waitForSelector(`tr[data-job="${id}"]`, { timeout: WAIT });
    const listHtml = await page.content();
    await page.click(`tr[data-job="${id}"] a.rowlink`);
    await page.waitForSelector('[data-testid=timeline] li', { timeout: WAIT });
    await page.waitForSelector('h1 [data-state=succeeded]', { timeout: WAIT });
    const jobHtml = await page.content();
    await shot(page, 'job-analyst');
    await page.click('nav a[href="/history"]');
    await page.waitForSelector('[data-testid=history-jobs]', { timeout: WAIT });
    await page.click(`[data-testid=history-jobs] tr[data-job="${id}"] a`);
    await page.waitForSelector('[data-testid=timeline] li', { timeout: WAIT });
    const historyHtml = await page.content();
    await page.click('nav a[href="/experiments"]');
    await page.waitForSelector('h1', { timeout: WAIT });
    await page.waitForLoadState('networkidle', { timeout: WAIT }).catch(() => {});
    const expHtml = await page.content();
    for (const [what, html] of [
      ['jobs', listHtml],
      ['job', jobHtml],
      ['history', historyHtml],
      ['experiments', expHtml],
    ]) {
      for (const secret of [marker, 'ENV_HIDDEN_VALUE', 'alice']) {
        if (html.includes(secret)) fail(`the analyst's ${what} page shows ${secret}`);
      }
      for (const testid of ['command', 'spec', 'logs', 'cancel', 'retry', 'bulk-cancel', 'bulk-retry']) {
        if (html.includes(`data-testid="${testid}"`)) fail(`the analyst's ${what} page offers ${testid}`);
      }
      if (/>\s*Owner\s*</.test(html)) fail(`the analyst's ${what} page has an Owner column or filter`);
    }
    const apiResponses = received.filter((r) => r.url.includes('/v1/'));
    for (const r of apiResponses) {
      for (const secret of [marker, 'ENV_HIDDEN_VALUE', '"owner"', 'alice']) {
        if (r.body.includes(secret)) fail(`a response the analyst's page received (${r.url}) holds ${secret}`);
      }
    }
    result({ checkedResponses: apiResponses.length });
    noProblems(problems);
    await close();
  },

  // The scrubber set before the job was queued does not show it; after, it does.
  async history() {
    const id = process.env.FETCHML_JOB;
    const before = Number(process.env.FETCHML_SEQ_BEFORE);
    const after = Number(process.env.FETCHML_SEQ_AFTER);
    const { page, problems, close } = await open();
    await signIn(page, 'root');
    await page.goto(`${BASE}/history?seq=${before}`);
    await page.waitForFunction((s) => document.querySelector('[data-testid=position]')?.textContent?.includes(`seq ${s} `), before, { timeout: WAIT });
    await page.waitForSelector('[data-testid=history-jobs], .empty', { timeout: WAIT });
    await page.waitForFunction(() => !document.querySelector('[aria-busy=true]'), null, { timeout: WAIT });
    const shownBefore = (await page.$(`tr[data-job="${id}"]`)) !== null;
    // Step forward with the buttons and the slider, as a person would.
    await page.click('[data-testid=step-forward]');
    await page.waitForFunction((s) => location.search.includes(`seq=${s + 1}`), before, { timeout: WAIT });
    await page.goto(`${BASE}/history?seq=${after}&job=${id}`);
    await page.waitForSelector(`tr[data-job="${id}"]`, { timeout: WAIT });
    await page.waitForSelector('[data-testid=timeline] li', { timeout: WAIT });
    const timelineTypes = await page.$$eval('[data-testid=timeline] li', (ls) => ls.map((l) => l.getAttribute('data-type')));
    await shot(page, 'history');
    await page.click('[data-testid=live]');
    await page.waitForFunction(() => !location.search.includes('seq='), null, { timeout: WAIT });
    await page.waitForFunction(() => document.querySelector('[data-testid=position]')?.textContent?.startsWith('live'), null, { timeout: WAIT });
    result({ shownBefore, shownAfter: true, timelineTypes });
    noProblems(problems);
    await close();
  },

  // The admin's audit page lists logins and refusals and narrows by actor;
  // the other roles are not offered it (no nav entry, the path is no page).
  async audit() {
    const refusedBy = process.env.FETCHML_REFUSED_BY;
    for (const user of ['alice', 'ana']) {
      const { page, received, problems, close } = await open();
      await signIn(page, user);
      await page.waitForSelector('nav a[href="/jobs"]', { timeout: WAIT });
      const hasNav = (await page.$('nav a[href="/audit"]')) !== null;
      await page.goto(`${BASE}/audit`);
      await page.waitForSelector('h1', { timeout: WAIT });
      const heading = (await page.textContent('h1')).trim();
      await page.waitForLoadState('networkidle', { timeout: WAIT }).catch(() => {});
      const askedTrail = received.some((r) => new URL(r.url).pathname === '/v1/audit');
      if (user === 'ana') await shot(page, 'audit-analyst');
      result({ user, auditNav: hasNav, auditHeading: heading, askedTrail });
      noProblems(problems);
      await close();
    }
    const { page, problems, close } = await open();
    await signIn(page, 'root');
    await page.click('nav a[href="/audit"]');
    await page.waitForSelector('[data-testid=audit] tbody tr', { timeout: WAIT });
    const rows = () =>
      page.$$eval('[data-testid=audit] tbody tr', (ts) =>
        ts.map((t) => ({ type: t.dataset.type, outcome: t.dataset.outcome, actor: t.dataset.actor })),
      );
    const all = await rows();
    await shot(page, 'audit');
    // Narrow to the refusing user: every row is theirs, the refusal among them.
    await page.getByLabel('Actor').fill(refusedBy);
    await page.getByLabel('Actor').press('Enter');
    await page.waitForFunction((a) => location.search.includes(`actor=${a}`), refusedBy, { timeout: WAIT });
    await page.waitForFunction(
      (a) => {
        const t = document.querySelector('[data-testid=audit]');
        const trs = [...document.querySelectorAll('[data-testid=audit] tbody tr')];
        return t?.getAttribute('aria-busy') === 'false' && trs.length > 0 && trs.every((r) => r.dataset.actor === a);
      },
      refusedBy,
      { timeout: WAIT },
    );
    const byActor = await rows();
    // Refusals only, by the outcome filter.
    await page.getByLabel('Outcome').selectOption('refused');
    await page.waitForFunction(() => location.search.includes('outcome=refused'), null, { timeout: WAIT });
    await page.waitForFunction(
      () => {
        const trs = [...document.querySelectorAll('[data-testid=audit] tbody tr')];
        return trs.length > 0 && trs.every((r) => r.dataset.outcome === 'refused');
      },
      null,
      { timeout: WAIT },
    );
    const refused = await rows();
    // A time range that ends before the log began: the empty state says what to do.
    await page.goto(`${BASE}/audit?until=2000-01-01T00:00:00Z`);
    await page.waitForSelector('.empty', { timeout: WAIT });
    const emptyText = (await page.textContent('.empty')).trim();
    result({ all, byActor, refused, emptyText });
    noProblems(problems);
    await close();
  },
};

// Measurements (tests/browser/main.rs: small in the suite, full size for BENCHMARKS.md).
scenarios.perf = async function perf() {
  const { page, close } = await open(undefined, { record: false });
  await signIn(page, 'root');
  const firstPaint = [];
  // The session is in sessionStorage: each reload is a cold start of the app
  // (the HTTP cache keeps the hashed assets, as in a returning visitor's browser).
  for (let i = 0; i < 5; i++) {
    await page.goto(`${BASE}/jobs`);
    await page.waitForSelector('[data-testid=jobs-table] tbody tr', { timeout: WAIT });
    await page.waitForFunction(() => performance.getEntriesByName('fetchml:jobs-rows').length > 0, null, { timeout: WAIT });
    firstPaint.push(await page.evaluate(() => performance.getEntriesByName('fetchml:jobs-rows')[0].startTime));
  }
  result({ firstUsefulPaintMs: firstPaint });
  // Frame times and long tasks while the api appends 1000 job events per
  // second (100 queued jobs every 100 ms, over HTTP), the page following them live.
  // The list's length (the table renders only the rows on screen).
  const listed = async () => Number(await page.getAttribute('[data-testid=jobs-table]', 'data-rows'));
  const rowsBefore = await listed();
  await page.evaluate(() => {
    window.__frames = [];
    window.__long = [];
    new PerformanceObserver((l) => l.getEntries().forEach((e) => window.__long.push(e.duration))).observe({ type: 'longtask' });
    let last = performance.now();
    const tick = (t) => {
      window.__frames.push(t - last);
      last = t;
      if (!window.__stop) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  const seconds = Number(process.env.FETCHML_PERF_SECONDS || 10);
  // FETCHML_PERF_PROFILE=1: a CPU profile of the page during the burst,
  // printed as the functions with the most self time.
  const cdp = await startProfile(page);
  // FETCHML_PERF_TRACE=1: a trace of the renderer during the burst (the
  // timeline's categories), printed as the main thread's self time per kind of
  // work: what the profiler lumps into "(program)" (style, layout, paint).
  const tracer = process.env.FETCHML_PERF_TRACE ? await page.context().newCDPSession(page) : null;
  const traceEvents = [];
  let traced = null;
  if (tracer) {
    tracer.on('Tracing.dataCollected', (d) => traceEvents.push(...d.value));
    traced = new Promise((r) => tracer.once('Tracing.tracingComplete', r));
    await tracer.send('Tracing.start', {
      categories: 'devtools.timeline,disabled-by-default-devtools.timeline,blink,cc,v8.execute',
      transferMode: 'ReportEvents',
    });
  }
  const started = Date.now();
  let sent = 0;
  // One batch every 100 ms whether or not the previous one was answered (at
  // most 10 in flight), so a slow answer does not lower the rate.
  const inflight = new Set();
  // The job with the highest sequence: the table's top row once shown.
  let newest = { seq: -1, id: null };
  for (let i = 0; i < seconds * 10; i++) {
    const jobs = Array.from({ length: 100 }, () => ({ command: ['true'], pool: 'perf' }));
    const p = api('/v1/jobs/batch', KEYS.root, { jobs }).then((r) => {
      sent += 100;
      inflight.delete(p);
      for (const j of r?.jobs ?? []) if (j.seq > newest.seq) newest = j;
    });
    inflight.add(p);
    if (inflight.size >= 10) await Promise.race(inflight);
    const due = started + (i + 1) * 100;
    if (Date.now() < due) await new Promise((r) => setTimeout(r, due - Date.now()));
  }
  await Promise.all(inflight);
  const elapsed = (Date.now() - started) / 1000;
  // New jobs join the table a few times a second: how long after the last
  // one was accepted it is on screen (stream delivery plus that wait).
  const answered = Date.now();
  await page.waitForSelector(`tr[data-job="${newest.id}"]`, { timeout: WAIT });
  const newestShownMs = Date.now() - answered;
  await stopProfile(cdp);
  if (tracer) {
    await tracer.send('Tracing.end');
    await traced;
    result({ traceMainThreadSelfMs: mainThreadSelf(traceEvents).slice(0, 25), traceLongestTasks: longestTasks(traceEvents, 5) });
  }
  const { frames, long } = await page.evaluate(() => {
    window.__stop = true;
    return { frames: window.__frames.slice(5), long: window.__long };
  });
  await shot(page, 'jobs-burst');
  const rowsAfter = await listed();
  result({
    eventsPerSecond: Math.round(sent / elapsed),
    frames: frames.length,
    frameMsP50: quantile(frames, 0.5),
    frameMsP99: quantile(frames, 0.99),
    frameMsMax: quantile(frames, 1),
    longTasks: long.length,
    longTaskMsMax: long.length ? quantile(long, 1) : 0,
    liveRowsShown: rowsAfter - rowsBefore,
    newestShownMs,
  });
  await close();
};

/** Self time per event name on the renderer's main thread, most first. */
function mainThreadSelf(events) {
  const main = events.find((e) => e.ph === 'M' && e.name === 'thread_name' && e.args?.name === 'CrRendererMain');
  if (!main) return [];
  const xs = events
    .filter((e) => e.pid === main.pid && e.tid === main.tid && e.ph === 'X' && typeof e.dur === 'number')
    .sort((a, b) => a.ts - b.ts || b.dur - a.dur);
  const self = new Map();
  const counts = new Map();
  const stack = [];
  for (const e of xs) {
    while (stack.length && stack[stack.length - 1].ts + stack[stack.length - 1].dur <= e.ts) stack.pop();
    const parent = stack[stack.length - 1];
    if (parent) self.set(parent.name, (self.get(parent.name) ?? 0) - e.dur);
    self.set(e.name, (self.get(e.name) ?? 0) + e.dur);
    counts.set(e.name, (counts.get(e.name) ?? 0) + 1);
    stack.push(e);
  }
  return [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .map(([k, us]) => `${Math.round(us / 1000)} ms ${k} (${counts.get(k)}x)`);
}

/** The longest tasks on the renderer's main thread, each with what took its time. */
function longestTasks(events, n) {
  const main = events.find((e) => e.ph === 'M' && e.name === 'thread_name' && e.args?.name === 'CrRendererMain');
  if (!main) return [];
  const xs = events.filter((e) => e.pid === main.pid && e.tid === main.tid && e.ph === 'X' && typeof e.dur === 'number');
  const tasks = xs.filter((e) => e.name === 'RunTask').sort((a, b) => b.dur - a.dur).slice(0, n);
  return tasks.map((t) => {
    const inside = xs.filter((e) => e !== t && e.ts >= t.ts && e.ts + e.dur <= t.ts + t.dur);
    const self = mainThreadSelf([main, ...inside]).slice(0, 6);
    return `${Math.round(t.dur / 1000)} ms: ${self.join(', ')}`;
  });
}

// FETCHML_PERF_PROFILE=1: a CPU profile of the page (Chrome's sampling
// profiler through the DevTools protocol) from startProfile to stopProfile,
// reported as the functions with the most self time.
async function startProfile(page) {
  if (!process.env.FETCHML_PERF_PROFILE) return null;
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Profiler.enable');
  await cdp.send('Profiler.start');
  return cdp;
}

async function stopProfile(cdp) {
  if (!cdp) return;
  const { profile } = await cdp.send('Profiler.stop');
  const self = new Map();
  const dt = profile.timeDeltas ?? [];
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  profile.samples.forEach((id, i) => {
    const f = byId.get(id).callFrame;
    const k = `${f.functionName || '(anonymous)'} ${f.url.split('/').pop()}:${f.lineNumber}`;
    self.set(k, (self.get(k) ?? 0) + (dt[i] ?? 0) / 1000);
  });
  const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25);
  result({ profileTopSelfMs: top.map(([k, ms]) => `${Math.round(ms)} ms ${k}`) });
}

function quantile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : null;
}

// A job page following a fast log (tests/browser/main.rs writes
// `L<n> <ms since epoch>` lines once the go file exists): every animation
// frame, how old the newest rendered line is, whether it is on screen, and
// how many lines the view holds.
scenarios.logs = async function logs() {
  const id = process.env.FETCHML_JOB;
  const total = Number(process.env.FETCHML_LOG_TOTAL);
  const rate = Number(process.env.FETCHML_LOG_RATE);
  const { page, problems, close } = await open(undefined, { record: false });
  await signIn(page, 'root');
  await page.goto(`${BASE}/jobs/${id}`);
  await page.waitForSelector('[data-testid=log-lines]', { timeout: WAIT });
  await page.waitForSelector('.live-dot.open', { timeout: WAIT });
  // As a person following the log would: the log box in view.
  await page.$eval('[data-testid=logs]', (e) => e.scrollIntoView({ block: 'end' }));
  await page.evaluate(() => {
    const w = (window.__log = { samples: [], frames: [], long: [], last: -1, maxDom: 0, atBottom: 0 });
    new PerformanceObserver((l) => l.getEntries().forEach((e) => w.long.push(e.duration))).observe({ type: 'longtask' });
    let prev = performance.now();
    const tick = (t) => {
      const pre = document.querySelector('[data-testid=log-lines]');
      const m = /^L(\d+) (\d+)$/.exec(pre?.lastElementChild?.textContent ?? '');
      if (m) {
        w.frames.push(t - prev);
        w.last = Number(m[1]);
        w.samples.push(Date.now() - Number(m[2]));
        w.maxDom = Math.max(w.maxDom, pre.childElementCount);
        if (pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4) w.atBottom++;
      }
      prev = t;
      if (!w.stop) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  const cdp = await startProfile(page);
  writeFileSync(process.env.FETCHML_GO_FILE, '');
  const started = Date.now();
  await page.waitForFunction((n) => window.__log.last >= n - 1, total, { timeout: WAIT + (total / rate) * 4000, polling: 100 });
  const doneMs = Date.now() - started;
  await stopProfile(cdp);
  const w = await page.evaluate(() => {
    window.__log.stop = true;
    return window.__log;
  });
  // The newest line is on screen: inside the scrolled box's visible part.
  const lastOnScreen = await page.evaluate((n) => {
    const pre = document.querySelector('[data-testid=log-lines]');
    const last = pre.lastElementChild;
    if (!last?.textContent?.startsWith(`L${n - 1} `)) return `the last line is ${last?.textContent}`;
    const a = pre.getBoundingClientRect();
    const b = last.getBoundingClientRect();
    // Inside the log box's visible part (its padding aside).
    return (b.bottom <= a.bottom + 1 && b.top >= a.top - 1) || `line at ${b.top}-${b.bottom}, box ${a.top}-${a.bottom}`;
  }, total);
  await shot(page, 'job-fast-log');
  // The worker's share of the lag: each line's publish time (`at`, set by the
  // worker) against the time the job wrote it.
  const ndjson = await (await fetch(`${BASE}/v1/jobs/${id}/logs`, { headers: { Authorization: `Bearer ${KEYS.root}` } })).text();
  const workerLag = ndjson
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l))
    .map((d) => [/^L\d+ (\d+)$/.exec(d.line), d.at])
    .filter(([m]) => m)
    .map(([m, at]) => Date.parse(at) - Number(m[1]));
  result({
    rate,
    total,
    followedMs: doneMs,
    lastLine: w.last,
    lastOnScreen,
    maxDomLines: w.maxDom,
    samples: w.samples.length,
    lagMsP50: quantile(w.samples, 0.5),
    lagMsP99: quantile(w.samples, 0.99),
    lagMsMax: quantile(w.samples, 1),
    storedLines: workerLag.length,
    workerLagMsP50: quantile(workerLag, 0.5),
    workerLagMsP99: quantile(workerLag, 0.99),
    atBottomShare: w.samples.length ? w.atBottom / w.samples.length : 0,
    frameMsP50: quantile(w.frames, 0.5),
    frameMsP99: quantile(w.frames, 0.99),
    longTasks: w.long.length,
    longTaskMsMax: w.long.length ? quantile(w.long, 1) : 0,
  });
  noProblems(problems);
  await close();
};

const name = process.argv[2];
const run = scenarios[name];
if (!run) {
  console.error(`unknown scenario ${name}; one of ${Object.keys(scenarios).join(', ')}`);
  process.exit(2);
}
try {
  await run();
  console.log(`scenario ${name}: ok`);
} catch (e) {
  console.error(`scenario ${name} failed: ${e?.stack ?? e}`);
  process.exit(1);
}
