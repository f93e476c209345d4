// Bundles src/page.js (and the connect / protobuf-es libraries it imports) into dist/page.js,
// one ES module the static server hands to the browser. `npm run build` and run.mjs (when the
// bundle is missing) both use this, so the options live in one place.
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = fileURLToPath(new URL(".", import.meta.url));

export async function build() {
  await esbuild.build({
    absWorkingDir: here,
    entryPoints: ["src/page.js"],
    outfile: "dist/page.js",
    bundle: true,
    format: "esm",
    target: "es2022",
    logLevel: "warning",
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await build();
}
