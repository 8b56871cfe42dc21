// The trained head and query expansion on the results: scripts/e2e-server.sh trains a head
// (`kadr train`) before serving. A result shows the head's guess beside the vote; "category
// from" switches what gives the category (in the URL, in the submission); query expansion and
// database augmentation search again and the hits say so, with JavaScript and without.
import { test, expect } from '@playwright/test';
import { dropFiles, imagesFromCategories, watchErrors } from './helpers';

test('the head beside the vote, category from the head, query expansion and database augmentation', async ({ page, browser, request }) => {
  test.skip(!!process.env.KADR_E2E_URL, 'the head is trained by scripts/e2e-server.sh');
  const errors = watchErrors(page);
  const [[category, file]] = imagesFromCategories(1);
  await page.goto('/');
  await dropFiles(page, [file]);
  const card = page.locator('[data-testid=result-card][data-status=done]');
  await expect(card).toHaveCount(1, { timeout: 60_000 });

  // The head's guess is shown with its probabilities; the Tux Paint set has no valid/ split
  // to compare it on, so "the better on valid/" is the vote, and the page says why.
  const guess = card.getByTestId('head-guess');
  await expect(guess).toBeVisible();
  await expect(guess).toHaveAttribute('data-category', category);
  await expect(card.getByTestId('category-match')).toHaveAttribute('data-by', 'vote');
  await expect(page.getByTestId('category-source')).toContainText('no valid/ split');

  // Category from the head: in the URL, on the card, and in the submission.
  await page.getByTestId('by').selectOption('head');
  await expect(page).toHaveURL(/by=head/);
  await expect(card.getByTestId('category-match')).toHaveAttribute('data-by', 'head');
  await expect(card.getByTestId('category')).toHaveText(category);
  await expect(card.getByTestId('vote-category')).toContainText('The vote:');
  const href = await page.getByTestId('download-submission').getAttribute('href');
  expect(href).toContain('by=head');
  const sub = await request.get(href!);
  expect(sub.status()).toBe(200);
  expect(sub.headers()['x-kadr-category-by']).toBe('head');
  expect((await sub.text()).split('\n')[1].split(',')[1]).toBe(category);

  // Query expansion searches again: one request, and the hits say they are expanded.
  const visual = card.getByTestId('visual-match');
  await expect(visual).toHaveAttribute('data-qe', '0');
  const searches: string[] = [];
  page.on('request', (r) => r.url().includes('/api/v1/analysis') && searches.push(r.url()));
  await page.getByTestId('qe').fill('2');
  await page.getByTestId('qe').press('Enter');
  await expect(page).toHaveURL(/qe=2&qa=3/);
  await expect(visual).toHaveAttribute('data-qe', '2');
  await expect(visual).toContainText('query expanded with 2 neighbours');
  expect(searches.length).toBe(1);
  expect(searches[0]).toContain('qe=2');

  // Database augmentation too: one more search, against the augmented indexed images.
  await page.getByTestId('dba').fill('2');
  await page.getByTestId('dba').press('Enter');
  await expect(page).toHaveURL(/qe=2&qa=3&dba=2&da=3/);
  await expect(visual).toHaveAttribute('data-dba', '2');
  await expect(visual).toContainText('indexed images augmented with 2 neighbours');
  expect(searches.length).toBe(2);
  expect(searches[1]).toContain('dba=2');

  // The permanent page with the same tuning, server-rendered without JavaScript.
  const permalink = await card.getByTestId('permalink').getAttribute('href');
  expect(permalink).toContain('qe=2');
  expect(permalink).toContain('dba=2');
  const context = await browser.newContext({ javaScriptEnabled: false });
  const noJs = await context.newPage();
  expect((await noJs.goto(permalink!))?.status()).toBe(200);
  await expect(noJs.getByTestId('visual-match')).toHaveAttribute('data-qe', '2');
  await expect(noJs.getByTestId('visual-match')).toHaveAttribute('data-dba', '2');
  await expect(noJs.getByTestId('category-match')).toHaveAttribute('data-by', 'head');
  await expect(noJs.getByTestId('head-guess')).toHaveAttribute('data-category', category);
  await context.close();
  expect(errors).toEqual([]);
});
