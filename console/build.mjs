// Builds the console into dist/ (or the folder given as the one argument):
// console.js (the TypeScript and Chart.js, one minified bundle), console.css
// and index.html. The engine compiles dist/ into its binary and serves it at
// /console; a test builds into a folder of its own and compares.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";
import { join } from "node:path";

const out = process.argv[2] ?? "dist";
await mkdir(out, { recursive: true });
await build({
  entryPoints: ["src/console.ts", "src/console.css"],
  outdir: out,
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  charset: "utf8",
  logLevel: "warning",
});
await copyFile("src/index.html", join(out, "index.html"));
