// Time from drop to first result in the browser (Debian Chromium via Playwright), for one
// image and for a batch of 50, against a running kadr server (KADR_URL). Images come from
// DATASET (Tux Paint stamps, each dropped once: nothing is answered from the cache).
// Run through bench/drop_to_result.sh, which starts a server with an empty history.
import { chromium } from '@playwright/test';
import * as fs from 'node:fs';
import * as path from 'node:path';

const url = process.env.KADR_URL ?? 'http://127.0.0.1:3077';
const dataset = process.env.DATASET;
const walk = (d) => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]));
const files = walk(dataset).filter((f) => f.endsWith('.png')).sort();
// Spread over the categories; the single image and the batch never overlap.
const pick = (n, offset) => Array.from({ length: n }, (_, i) => files[(offset + i * 5) % files.length]);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function run(batch) {
  const page = await browser.newPage();
  await page.goto(url + '/');
  await page.waitForSelector('[data-testid=dropzone][data-ready=true]');
  const payload = batch.map((f) => ({ name: path.basename(f), b64: fs.readFileSync(f).toString('base64') }));
  // Build the files in the page first, so only the drop and what follows is timed.
  const dt = await page.evaluateHandle((items) => {
    const dt = new DataTransfer();
    for (const it of items) dt.items.add(new File([Uint8Array.from(atob(it.b64), (c) => c.charCodeAt(0))], it.name, { type: 'image/png' }));
    return dt;
  }, payload);
  const timings = await page.evaluate(async ({ dt, n }) => {
    const t0 = performance.now();
    let first = null;
    const done = new Promise((resolve) => {
      const check = () => {
        const ok = document.querySelectorAll('[data-testid=result-card][data-status=done]').length;
        const failed = document.querySelectorAll('[data-testid=result-card][data-status=failed]').length;
        if (ok > 0 && first === null) first = performance.now() - t0;
        if (ok + failed >= n) resolve({ first, all: performance.now() - t0, ok, failed });
      };
      new MutationObserver(check).observe(document.body, { subtree: true, childList: true, attributes: true });
    });
    document.querySelector('[data-testid=dropzone]').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    return await done;
  }, { dt, n: batch.length });
  await page.close();
  return timings;
}

const one = await run(pick(1, 0));
const fifty = await run(pick(50, 1));
await browser.close();
console.log('| drop | images | first result (ms) | all results (ms) | images/s | failed |');
console.log('|---|---|---|---|---|---|');
for (const [name, t, n] of [['one image', one, 1], ['batch of 50', fifty, 50]]) {
  console.log(`| ${name} | ${n} | ${t.first.toFixed(0)} | ${t.all.toFixed(0)} | ${(n / (t.all / 1000)).toFixed(1)} | ${t.failed} |`);
}
