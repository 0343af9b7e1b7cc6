/// <reference types="vitest/config" />
import { defineConfig } from 'vite';
import preact from '@preact/preset-vite';

// The api serves dist/ at / (api.ui_dir). Hashed files go to /assets, which the
// api caches for a year; index.html is never cached. No inline script or
// style ends up in index.html, so the api's Content-Security-Policy holds.
export default defineConfig({
  plugins: [preact()],
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
  server: {
    // `npm run dev` against a local api (./deploy/up).
    proxy: { '/v1': { target: 'http://127.0.0.1:9101', ws: true } },
  },
  test: {
    environment: 'node',
    include: ['src/**/*.test.ts'],
  },
});
