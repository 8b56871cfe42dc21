// Search by text: the nav's Search page takes a sentence and shows the indexed images whose
// texts (their labels) are most like it; a result page's "Refine with words" box searches the
// words fused with that image. Both are plain GET forms rendered on the server, so they work
// before hydration and without JavaScript.
import { test, expect } from '@playwright/test';
import { watchErrors } from './helpers';

test('search by text, then refine an image with words', async ({ page }) => {
  const errors = watchErrors(page);
  await page.goto('/');
  await page.getByRole('link', { name: 'Search' }).click();
  await expect(page).toHaveURL(/\/search$/);
  await page.getByTestId('search-input').fill('a brown bear');
  await page.getByTestId('search-submit').click();
  await expect(page).toHaveURL(/\/search\?q=a\+brown\+bear/);
  const hits = page.getByTestId('search-hit');
  await expect(hits).toHaveCount(20);
  await expect(page.getByTestId('search-summary')).toContainText('"a brown bear"');
  // Words about bears find the mammals' stamps first.
  await expect(hits.first()).toHaveAttribute('data-category', 'mammals');
  await expect(page.getByTestId('search-input')).toHaveValue('a brown bear');

  // A hit opens its own result page, whose box fuses words with it.
  await hits.first().locator('a').click();
  await expect(page).toHaveURL(/\/a\/[0-9a-f]{64}/);
  const hash = page.url().split('/a/')[1].split('?')[0];
  const refine = page.getByTestId('refine');
  await refine.getByTestId('search-input').fill('in the snow');
  await refine.getByTestId('search-submit').click();
  await expect(page).toHaveURL(new RegExp(`/search\\?q=in\\+the\\+snow&hash=${hash}`));
  await expect(page.getByTestId('search-example')).toBeVisible();
  await expect(page.getByTestId('search-hit')).toHaveCount(20);
  // The example image is the most like itself and the words together.
  await expect(page.getByTestId('search-hit').first().locator('a')).toHaveAttribute('href', `/a/${hash}`);
  expect(errors).toEqual([]);
});

test('search by text works without JavaScript', async ({ browser }) => {
  const context = await browser.newContext({ javaScriptEnabled: false });
  const page = await context.newPage();
  await page.goto('/search');
  await page.getByTestId('search-input').fill('a fish');
  await page.getByTestId('search-submit').click();
  await expect(page.getByTestId('search-hit')).toHaveCount(20);
  await context.close();
});
