// Screenshots of the main pages as a new user sees them, against a running server
// (KADR_URL, default the e2e server on :3055): the empty analyse page, five dropped Tux Paint
// images with results, a permanent result page, the dashboard and the dataset page.
// Writes PNGs to OUT (default target/screenshots).
import { chromium } from '@playwright/test';
import * as fs from 'node:fs';
import * as path from 'node:path';

const url = process.env.KADR_URL ?? 'http://127.0.0.1:3055';
const out = process.env.OUT ?? 'target/screenshots';
const dataset = process.env.DATASET ?? 'target/e2e/tuxpaint8';
fs.mkdirSync(out, { recursive: true });
const walk = (d) => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]));
const picks = fs.readdirSync(dataset).sort().slice(0, 5).map((c) => walk(path.join(dataset, c)).filter((f) => f.endsWith('.png')).sort()[1]);

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const shot = async (name) => { await page.waitForTimeout(300); await page.screenshot({ path: path.join(out, name), fullPage: true }); };

await page.goto(url + '/');
await page.waitForSelector('[data-testid=dropzone][data-ready=true]');
await shot('1-analyse-empty.png');
const dt = await page.evaluateHandle((items) => {
  const dt = new DataTransfer();
  for (const it of items) dt.items.add(new File([Uint8Array.from(atob(it.b64), (c) => c.charCodeAt(0))], it.name, { type: 'image/png' }));
  return dt;
}, picks.map((f) => ({ name: path.basename(f), b64: fs.readFileSync(f).toString('base64') })));
await page.getByTestId('dropzone').dispatchEvent('drop', { dataTransfer: dt });
await page.locator('[data-testid=result-card][data-status=done]').nth(4).waitFor();
await shot('2-analyse-results.png');
const link = await page.getByTestId('permalink').first().getAttribute('href');
await page.goto(url + link);
await shot('3-result-page.png');
await page.goto(url + '/dashboard');
await page.locator('[data-chart=chart-categories] canvas').waitFor();
await shot('4-dashboard.png');
await page.goto(url + '/dataset');
await shot('5-dataset.png');
await page.goto(url + '/docs/');
await page.getByText('/api/v1/analyse').first().waitFor();
await shot('6-api-docs.png');
await browser.close();
console.log(`screenshots in ${out}`);
