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
    expect(total).toBe(275);
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
  expect(errors).toEqual([]);
});

test('a folder outside the data roots is refused with a message', async ({ page }) => {
  await page.goto('/dataset');
  await page.getByTestId('folder').fill('/etc');
  await expect(page.getByTestId('add-folder')).toBeEnabled();
  await page.getByTestId('add-folder').click();
  await expect(page.getByTestId('error')).toContainText('outside the allowed data folders');
});
