/// <reference types="vitest/config" />
// Builds the console into the Python package, where the sidecar serves it at /ui.
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

export default defineConfig({
  base: "/ui/",
  plugins: [react()],
  build: {
    outDir: "../pgshard/control/static/ui",
    emptyOutDir: true,
    // One CSS file and hashed assets; nothing inline, so a strict CSP holds.
    assetsInlineLimit: 0,
    sourcemap: false,
  },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.{ts,tsx}"],
    setupFiles: ["src/__tests__/setup.ts"],
  },
});
