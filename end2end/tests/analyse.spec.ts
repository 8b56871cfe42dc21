// The main journey: drop five Tux Paint images, see neighbours and categories, tune the
// threshold and see the results change, export the CSV and the submission, then open a result's
// permanent URL with JavaScript disabled.
import { test, expect } from '@playwright/test';
import * as fs from 'node:fs';
import { dropFiles, imagesFromCategories, parseCsv, watchErrors } from './helpers';

test('drop, tune, export, and a permanent result page without JavaScript', async ({ page, browser }) => {
  const errors = watchErrors(page);
  const picked = imagesFromCategories(5);
  await page.goto('/');
  await dropFiles(page, picked.map(([, f]) => f));

  const cards = page.locator('[data-testid=result-card]');
  await expect(cards).toHaveCount(5);
  await expect(page.locator('[data-testid=result-card][data-status=done]')).toHaveCount(5, { timeout: 60_000 });
  await expect(page.getByTestId('progress')).toHaveText('5 / 5 processed');

  // Each image: neighbours shown, the best one itself (the stamps are indexed), a voted
  // category among the dataset's, and the ImageNet labels as text.
  const voted = new Map<string, string>();
  const categories = new Set(imagesFromCategories(100).map(([c]) => c));
  for (const [category, file] of picked) {
    const name = file.split('/').pop()!;
    const card = cards.filter({ hasText: name });
    await expect(card.getByTestId('match').first()).toHaveAttribute('data-category', category);
    expect(Number(await card.getByTestId('match-count').textContent())).toBeGreaterThan(1);
    const vote = (await card.getByTestId('category').textContent())!;
    expect(categories.has(vote), vote).toBe(true);
    voted.set(name, vote);
    await expect(card.getByTestId('text-label').first()).toBeVisible();
  }

  // A strict threshold keeps only near-identical images: the counts drop, in the browser,
  // without a new search, and the setting lands in the URL.
  const first = cards.first();
  const before = Number(await first.getByTestId('match-count').textContent());
  const searches: string[] = [];
  page.on('request', (r) => r.url().includes('/api/v1/analys') && searches.push(r.url()));
  await page.getByTestId('threshold').fill('0.99');
  await page.getByTestId('threshold').press('Enter');
  await expect(page).toHaveURL(/t=0\.99/);
  await expect(first.getByTestId('match-count')).toHaveText('1');
  expect(before).toBeGreaterThan(1);
  expect(searches).toEqual([]);
  await page.getByTestId('threshold').fill('0.3');
  await page.getByTestId('threshold').press('Enter');
  await expect(first.getByTestId('match-count')).toHaveText(String(before));

  // Export CSV: a header and one row per image, with the fields shown on screen.
  const [csvDownload] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export-csv').click()]);
  const csv = parseCsv(fs.readFileSync(await csvDownload.path(), 'utf8'));
  expect(csv[0].slice(0, 9)).toEqual(['file', 'hash', 'permalink', 'width', 'height', 'category', 'confidence', 'voters', 'matches']);
  const rows = csv.slice(1);
  expect(rows).toHaveLength(5);
  for (const [category, file] of picked) {
    const row = rows.find((r) => r[0] === file.split('/').pop());
    expect(row, file).toBeTruthy();
    expect(row![5]).toBe(voted.get(row![0]));
    expect(Number(row![8])).toBeGreaterThan(1);
    expect(row![10]).toBe(category); // match_1_category: the image itself
  }

  // The submission: the engine's format, one row per image.
  const [subDownload] = await Promise.all([page.waitForEvent('download'), page.getByTestId('download-submission').click()]);
  const sub = parseCsv(fs.readFileSync(await subDownload.path(), 'utf8'));
  expect(sub[0].slice(0, 5)).toEqual(['image', 'category', 'confidence', 'neighbour_1', 'score_1']);
  expect(sub[0]).toHaveLength(3 + 2 * 10);
  expect(sub).toHaveLength(6);
  for (const r of sub.slice(1)) expect(r[1]).toBe(voted.get(r[0]));

  // The permanent URL renders on the server: open it with JavaScript off.
  const permalink = await first.getByTestId('permalink').getAttribute('href');
  const context = await browser.newContext({ javaScriptEnabled: false });
  const noJs = await context.newPage();
  const response = await noJs.goto(permalink!);
  expect(response?.status()).toBe(200);
  const card = noJs.getByTestId('result-card');
  const firstName = (await first.getByTestId('file-name').textContent())!;
  await expect(card.getByTestId('category')).toHaveText(voted.get(firstName)!);
  expect(await card.getByTestId('match').count()).toBe(before);
  // The tuning form works without JavaScript too: it reloads with the new threshold.
  await noJs.getByTestId('threshold').fill('0.99');
  await noJs.getByRole('button', { name: 'Apply' }).click();
  await expect(noJs).toHaveURL(/t=0\.99/);
  await expect(noJs.getByTestId('match-count')).toHaveText('1');
  await context.close();

  expect(errors).toEqual([]);
});

test('files that are not images are refused one by one, the rest go on', async ({ page }) => {
  await page.goto('/');
  await expect(page.getByTestId('dropzone')).toHaveAttribute('data-ready', 'true');
  const [[, good]] = imagesFromCategories(1);
  const dataTransfer = await page.evaluateHandle((b64) => {
    const dt = new DataTransfer();
    dt.items.add(new File(['hello'], 'notes.txt', { type: 'text/plain' }));
    // Claims to be an image but is not: the server must refuse it by its bytes.
    dt.items.add(new File(['not a png at all'], 'fake.png', { type: 'image/png' }));
    dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], 'real.png', { type: 'image/png' }));
    return dt;
  }, fs.readFileSync(good).toString('base64'));
  await page.getByTestId('dropzone').dispatchEvent('drop', { dataTransfer });
  const cards = page.locator('[data-testid=result-card]');
  await expect(cards).toHaveCount(3);
  await expect(cards.filter({ hasText: 'notes.txt' })).toHaveAttribute('data-status', 'failed');
  await expect(cards.filter({ hasText: 'notes.txt' })).toContainText('not an image');
  await expect(cards.filter({ hasText: 'fake.png' })).toHaveAttribute('data-status', 'failed', { timeout: 30_000 });
  await expect(cards.filter({ hasText: 'fake.png' })).toContainText('not a supported image');
  await expect(cards.filter({ hasText: 'real.png' })).toHaveAttribute('data-status', 'done', { timeout: 30_000 });
});
