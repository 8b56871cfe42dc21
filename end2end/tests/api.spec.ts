// The REST API as a client sees it: status, the OpenAPI document and its UI (local assets),
// JSON errors with 4xx for bad input.
import { test, expect } from '@playwright/test';
import * as fs from 'node:fs';
import { imagesFromCategories } from './helpers';

test('status, OpenAPI document and docs UI', async ({ page, request }) => {
  const status = await (await request.get('/status')).json();
  expect(status.model).toMatch(/^tf_efficientnet_lite0@/);
  expect(status.index_size).toBeGreaterThan(0);
  const doc = await (await request.get('/api/openapi.json')).json();
  expect(doc.openapi).toBe('3.1.0');
  expect(Object.keys(doc.paths)).toContain('/api/v1/analyse');

  const external: string[] = [];
  page.on('request', (r) => !r.url().startsWith('http://127.0.0.1') && !r.url().startsWith('data:') && external.push(r.url()));
  await page.goto('/docs/');
  await expect(page.getByText('/api/v1/analyse').first()).toBeVisible();
  expect(external).toEqual([]);
});

test('analyse over HTTP, and 4xx JSON errors for bad input', async ({ request }) => {
  const [[category, file]] = imagesFromCategories(1);
  const ok = await request.post('/api/v1/analyse', {
    multipart: { files: { name: 'q.png', mimeType: 'image/png', buffer: fs.readFileSync(file) } },
  });
  expect(ok.status()).toBe(200);
  const [outcome] = await ok.json();
  expect(outcome.analysis.hits[0].category).toBe(category);
  expect(outcome.analysis.hits[0].score).toBeGreaterThan(0.99);
  const hash = outcome.analysis.hash;
  expect((await request.get(`/api/v1/analysis?hash=${hash}`)).status()).toBe(200);
  expect((await request.get(`/img/${hash}?size=thumb`)).headers()['content-type']).toBe('image/jpeg');

  const bad: [string, number, string?][] = [
    ['/api/v1/analysis?hash=nothex', 422, 'hash'],
    [`/api/v1/analysis?hash=${'0'.repeat(64)}`, 404],
    ['/api/v1/stats?k=0', 422, 'k'],
    ['/api/v1/stats?t=NaN', 422, 'threshold'],
    ['/api/v1/stats?mode=loudest', 422, 'mode'],
    [`/api/v1/export.csv?hashes=${hash}&k=-3`, 422, 'k'],
    [`/api/v1/export.csv?hashes=${hash}&t=2`, 422, 'threshold'],
    ['/api/v1/export.csv', 422, 'hashes'],
    ['/img/zzz', 422, 'hash'],
    [`/img/${hash}?size=huge`, 422, 'size'],
    ['/api/v1/job?id=999', 404],
  ];
  for (const [url, code, field] of bad) {
    const r = await request.get(url);
    expect(r.status(), url).toBe(code);
    const body = await r.json();
    expect(body.status, url).toBe(code);
    expect(body.message, url).toBeTruthy();
    if (field) expect(body.field, url).toBe(field);
  }
  const empty = await request.post('/api/v1/analyse', { multipart: { note: 'no files' } });
  expect(empty.status()).toBe(422);
  const emptyBody = await empty.json();
  expect(emptyBody.status).toBe(422);
  expect(emptyBody.field).toBe('files');
  expect((await request.get('/status')).status()).toBe(200);
});
