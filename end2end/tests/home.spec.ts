// Home page journeys: the index summary is in the server-rendered HTML (works with
// JavaScript off), and once hydrated the Refresh button calls the server function again.
import { test, expect, type Page } from '@playwright/test';

/** The summary as rendered: model, total, and the table's image counts. */
async function expectSummary(page: Page) {
  await expect(page.getByTestId('model')).not.toBeEmpty();
  const rows = page.getByTestId('categories').locator('tbody tr');
  await expect(rows.first()).toBeVisible();
  const counts = await rows.locator('td:nth-child(3)').allTextContents();
  const total = Number(await page.getByTestId('total-images').textContent());
  expect(counts.reduce((sum, c) => sum + Number(c), 0)).toBe(total);
  // Our own server (scripts/e2e-server.sh) indexes the 275 Tux Paint stamps.
  if (!process.env.KADR_E2E_URL) {
    expect(total).toBe(275);
    await expect(page.getByTestId('categories')).toContainText('mammals');
  }
}

test.describe('without JavaScript', () => {
  test.use({ javaScriptEnabled: false });

  test('the summary is server-rendered', async ({ page }) => {
    const response = await page.goto('/');
    expect(response?.status()).toBe(200);
    await expect(page).toHaveTitle('kadr');
    await expectSummary(page);
    await expect(page.getByRole('columnheader', { name: 'Category' })).toBeVisible();
    // Nothing can handle a click before hydration, so the button says so.
    await expect(page.getByTestId('refresh')).toBeDisabled();
  });
});

test('after hydration Refresh calls the server again', async ({ page }) => {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('response', (r) => r.status() >= 400 && !r.url().endsWith('/favicon.ico') && errors.push(`${r.status()} ${r.url()}`));

  await page.goto('/');
  await expectSummary(page);
  await expect(page.getByTestId('refresh-count')).toHaveText('0');

  const button = page.getByTestId('refresh');
  await expect(button).toBeEnabled(); // enabled by an effect, i.e. once hydrated
  const reply = page.waitForResponse((r) => r.url().includes('/api/summary') && r.request().method() === 'POST');
  await button.click();
  expect((await reply).status()).toBe(200);
  await expect(page.getByTestId('refresh-count')).toHaveText('1');
  await expectSummary(page);

  await button.click();
  await expect(page.getByTestId('refresh-count')).toHaveText('2');
  expect(errors).toEqual([]);
});
