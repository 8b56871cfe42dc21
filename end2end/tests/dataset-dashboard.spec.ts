// The dataset page (works without JavaScript), an evaluation run from it with its progress,
// and the dashboard's charts drawn by ECharts.
import { test, expect, type Page } from '@playwright/test';
import { dropFiles, imagesFromCategories, watchErrors } from './helpers';

async function expectSummary(page: Page) {
  await expect(page.getByTestId('model')).not.toBeEmpty();
  const rows = page.getByTestId('categories').locator('tbody tr');
  await expect(rows.first()).toBeVisible();
  const counts = await rows.locator('td:nth-child(3)').allTextContents();
  const total = Number(await page.getByTestId('total-images').textContent());
  expect(counts.reduce((sum, c) => sum + Number(c), 0)).toBe(total);
  if (!process.env.KADR_E2E_URL) {
    // The Tux Paint set's 275 stamps and the planted copy (scripts/e2e-server.sh).
    expect(total).toBe(276);
    await expect(page.getByTestId('categories')).toContainText('mammals');
  }
}

test.describe('without JavaScript', () => {
  test.use({ javaScriptEnabled: false });

  test('the dataset summary is server-rendered', async ({ page }) => {
    const response = await page.goto('/dataset');
    expect(response?.status()).toBe(200);
    await expectSummary(page);
  });
});

test('evaluate from the dataset page, then see the dashboard charts', async ({ page }) => {
  test.setTimeout(120_000);
  const errors = watchErrors(page);
  // Something analysed, so the usage charts have data.
  await page.goto('/');
  await dropFiles(page, imagesFromCategories(3).map(([, f]) => f));
  await expect(page.locator('[data-testid=result-card][data-status=done]')).toHaveCount(3, { timeout: 60_000 });

  await page.goto('/dataset');
  await expectSummary(page);
  const evaluate = page.getByTestId('evaluate');
  await expect(evaluate).toBeEnabled();
  await evaluate.click();
  // The job just started, not an earlier one from the history.
  const job = page.getByTestId('current-job').locator('[data-testid=job]');
  await expect(job).toHaveAttribute('data-state', 'done', { timeout: 90_000 });
  await expect(job).toContainText('MAP@10');

  await page.goto('/dashboard');
  expect(Number(await page.getByTestId('analysed-count').textContent())).toBeGreaterThanOrEqual(3);
  for (const id of ['chart-categories', 'chart-confidence', 'chart-stages', 'chart-throughput', 'chart-map', 'chart-confusion', 'chart-embedding']) {
    // ECharts draws into a canvas inside the box once hydrated.
    await expect(page.locator(`[data-chart=${id}] canvas`)).toHaveCount(1);
  }
  await expect(page.getByTestId('eval-headline')).toContainText('MAP@10 0.6');
  await expect(page.getByTestId('worst').locator('img').first()).toBeVisible();

  // Tune k: the evaluation is run again from the stored vectors and its figures move.
  await expect(page.getByTestId('eval-tuning')).toContainText('k 10,');
  const headline = page.getByTestId('eval-headline');
  const atTen = await headline.textContent();
  const accuracy = (text: string | null) => Number(/vote accuracy ([0-9.]+)/.exec(text ?? '')?.[1]);
  await page.getByTestId('k').fill('1');
  await page.getByTestId('k').press('Enter');
  await expect(page).toHaveURL(/k=1(&|$)/);
  await expect(page.getByTestId('eval-tuning')).toContainText('k 1,');
  await expect(headline).not.toHaveText(atTen ?? '');
  expect(accuracy(await headline.textContent())).not.toBe(accuracy(atTen));
  expect(accuracy(await headline.textContent())).toBeGreaterThan(0.5);
  // The same URL loaded afresh (server-rendered) shows the same figures.
  const atOne = await headline.textContent();
  await page.reload();
  await expect(headline).toHaveText(atOne ?? '');
  // The head asked for: one is trained and scored in cross-validation beside the vote.
  await page.getByTestId('by').selectOption('head');
  await expect(page).toHaveURL(/by=head/);
  await expect(page.getByTestId('eval-tuning')).toContainText('head scored');
  expect(Number(/head accuracy ([0-9.]+)/.exec((await headline.textContent()) ?? '')?.[1])).toBeGreaterThan(0.5);
  expect(errors).toEqual([]);
});

test('the duplicates gallery shows the planted copy side by side with its original', async ({ page }) => {
  test.skip(!!process.env.KADR_E2E_URL, 'the planted copy is scripts/e2e-server.sh\'s');
  const errors = watchErrors(page);
  await page.goto('/dashboard');
  await expect(page.getByTestId('dupes-headline')).toContainText(/\d+ exact and \d+ near duplicate pairs/);
  const pair = page.getByTestId('dupe-pair').filter({ hasText: 'chimp-copy.png' });
  await expect(pair).toHaveCount(1);
  await pair.scrollIntoViewIfNeeded();
  await expect(pair).toHaveAttribute('data-kind', 'exact');
  await expect(pair).toContainText('apes/chimp.png');
  await expect(pair.getByTestId('dupe-similarity')).toHaveText('1.000');
  // Both thumbnails are real images, served by content hash.
  const imgs = pair.locator('img');
  await expect(imgs).toHaveCount(2);
  for (const img of await imgs.all()) {
    await expect(img).toHaveJSProperty('complete', true);
    expect(await img.evaluate((i: HTMLImageElement) => i.naturalWidth)).toBeGreaterThan(0);
  }
  expect(errors).toEqual([]);
});

test('a folder outside the data roots is refused with a message', async ({ page }) => {
  await page.goto('/dataset');
  await page.getByTestId('folder').fill('/etc');
  await expect(page.getByTestId('add-folder')).toBeEnabled();
  await page.getByTestId('add-folder').click();
  await expect(page.getByTestId('error')).toContainText('outside the allowed data folders');
});
