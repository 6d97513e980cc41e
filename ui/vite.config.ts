// The web UI's build: Preact + TypeScript, output into the Python package so that the wheel
// carries it (archive/query/ui/static, served at /ui/ by archive/query/ui/routes.py).
import { defineConfig } from "vite";
import preact from "@preact/preset-vite";

export default defineConfig({
  plugins: [preact()],
  base: "/ui/",
  build: {
    outDir: "../archive/query/ui/static",
    emptyOutDir: true,
    assetsDir: "assets",
    // No inline script anywhere: the page's CSP has no 'unsafe-inline' (a small asset stays a file).
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    target: "es2022",
  },
});
