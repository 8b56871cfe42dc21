// Playwright for kadr's journeys in Debian's Chromium (no browser download).
// The server under test is KADR_E2E_URL if set; otherwise scripts/e2e-server.sh starts the
// real `kadr serve` on port 3055 over the Tux Paint set (scripts/setup.sh builds everything first).
import { defineConfig, devices } from '@playwright/test';

const external = process.env.KADR_E2E_URL;
const baseURL = external ?? 'http://127.0.0.1:3055';

export default defineConfig({
  testDir: './tests',
  timeout: 90_000,
  expect: { timeout: 10_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [['list']],
  outputDir: './test-results',
  use: {
    baseURL,
    trace: 'retain-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    },
  },
  projects: [{ name: 'chromium', use: { ...devices['Desktop Chrome'] } }],
  webServer: external
    ? undefined
    : {
        command: 'bash scripts/e2e-server.sh',
        cwd: '..',
        url: `${baseURL}/`,
        timeout: 600_000,
        reuseExistingServer: false,
        stdout: 'pipe',
        stderr: 'pipe',
      },
});
