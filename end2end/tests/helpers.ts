// Shared helpers for the journeys: the Tux Paint images the e2e server indexes, and a
// drag-and-drop of real files onto the drop zone.
import { expect, type Page } from '@playwright/test';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The dataset scripts/e2e-server.sh serves (relative to the repository root). */
export const DATASET = path.resolve(__dirname, '../../', process.env.E2E_DIR ?? 'target/e2e', 'tuxpaint8');

function walk(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? walk(p) : [p];
  });
}

/** One image from each of the first `n` categories (sorted), as [category, path]. */
export function imagesFromCategories(n: number): [string, string][] {
  const categories = fs.readdirSync(DATASET).sort().slice(0, n);
  return categories.map((c) => [c, walk(path.join(DATASET, c)).filter((f) => f.endsWith('.png')).sort()[0]]);
}

/** Drops `files` (paths) on the drop zone, as a user dragging them from a file manager. */
export async function dropFiles(page: Page, files: string[]) {
  const payload = files.map((f) => ({ name: path.basename(f), b64: fs.readFileSync(f).toString('base64') }));
  // The zone says when it is hydrated; a drop before that would go nowhere.
  await expect(page.getByTestId('dropzone')).toHaveAttribute('data-ready', 'true');
  const dataTransfer = await page.evaluateHandle((items) => {
    const dt = new DataTransfer();
    for (const it of items) {
      const bytes = Uint8Array.from(atob(it.b64), (c) => c.charCodeAt(0));
      dt.items.add(new File([bytes], it.name, { type: 'image/png' }));
    }
    return dt;
  }, payload);
  await page.getByTestId('dropzone').dispatchEvent('drop', { dataTransfer });
}

/** Fails the test on page errors and on failed requests other than expected ones. */
export function watchErrors(page: Page, allowed: (url: string, status: number) => boolean = () => false) {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('response', (r) => {
    if (r.status() >= 400 && !r.url().endsWith('/favicon.ico') && !allowed(r.url(), r.status())) {
      errors.push(`${r.status()} ${r.url()}`);
    }
  });
  return errors;
}

/** Parses simple CSV (quoted fields with doubled quotes). */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') { row.push(field); field = ''; }
    else if (c === '\n') { row.push(field); rows.push(row); row = []; field = ''; }
    else if (c !== '\r') field += c;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  return rows;
}
