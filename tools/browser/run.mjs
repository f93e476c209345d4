#!/usr/bin/env node
// Drives src/page.js in headless Chromium against a FlatRender gateway over grpc-web and prints
// the page's result as one line of JSON on stdout (exit 0 when it reports ok, 1 otherwise).
// Diagnostics (page console errors, CORS failures, runner errors) go to stderr.
//
//   node tools/browser/run.mjs --gateway http://127.0.0.1:PORT --descriptors descriptors.bin \
//     --email a@b.io --password secret --tenant-id UUID --file-id UUID [--timeout-ms 60000]
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import http from "node:http";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const here = fileURLToPath(new URL(".", import.meta.url));
const result = { ok: false, step: "runner" };
let browser;
let page;
let server;

try {
  const { values: a } = parseArgs({
    options: {
      gateway: { type: "string" },
      descriptors: { type: "string" },
      email: { type: "string" },
      password: { type: "string" },
      "tenant-id": { type: "string", default: "" },
      "file-id": { type: "string" },
      "timeout-ms": { type: "string", default: "60000" },
    },
  });
  for (const k of ["gateway", "descriptors", "email", "password", "file-id"]) {
    if (a[k] === undefined) throw new Error(`missing --${k}`);
  }
  const timeout = Number(a["timeout-ms"]);

  // A checkout without setup.sh having run still works, if node_modules is there.
  if (!existsSync(`${here}dist/page.js`)) await (await import("./build.mjs")).build();
  const files = {
    "/": ["text/html; charset=utf-8", await readFile(`${here}index.html`)],
    "/page.js": ["text/javascript; charset=utf-8", await readFile(`${here}dist/page.js`)],
    "/descriptors.bin": ["application/octet-stream", await readFile(a.descriptors)],
  };

  // The page gets its own origin (another port than the gateway's), so every call is a real
  // cross-origin request with a CORS preflight, as from a deployed frontend.
  server = http.createServer((req, res) => {
    const f = files[new URL(req.url, "http://x").pathname];
    // 204 for anything else (favicon.ico): a 404 would add a console error to stderr.
    if (!f) return res.writeHead(204).end();
    res.writeHead(200, { "content-type": f[0], "cache-control": "no-store" }).end(f[1]);
  });
  await new Promise((ok, fail) => server.once("error", fail).listen(0, "127.0.0.1", ok));
  const origin = `http://127.0.0.1:${server.address().port}`;

  const { chromium } = await import("playwright-core");
  browser = await chromium.launch({
    executablePath: process.env.FLATRENDER_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    timeout,
    args: [
      // Chromium refuses to start its sandbox as root (containers, CI); only then turn it off.
      ...(process.getuid?.() === 0 ? ["--no-sandbox"] : []),
      // Containers often have a 64 MiB /dev/shm, too small for Chromium's shared memory.
      "--disable-dev-shm-usage",
    ],
  });
  page = await browser.newPage();
  // CORS rejections show up only as console errors ("blocked by CORS policy"): pass them on.
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") console.error(`[page ${m.type()}] ${m.text()}`);
  });
  page.on("pageerror", (e) => console.error(`[page exception] ${e.message}`));

  const query = new URLSearchParams({
    gateway: a.gateway,
    email: a.email,
    password: a.password,
    tenantId: a["tenant-id"],
    fileId: a["file-id"],
  });
  await page.goto(`${origin}/?${query}`, { timeout });
  const handle = await page.waitForFunction(() => window.__flatrenderResult, null, { timeout });
  Object.assign(result, { step: undefined }, await handle.jsonValue());
} catch (e) {
  result.ok = false;
  // Where a page that never finished got stuck; "runner" when it never started.
  result.step = (await page?.evaluate(() => window.__flatrenderStep).catch(() => null)) ?? "runner";
  result.error = String(e?.message ?? e).split("\n")[0];
  console.error(e);
} finally {
  await browser?.close().catch((e) => console.error(e));
  server?.closeAllConnections();
  server?.close();
}

console.log(JSON.stringify(result));
process.exitCode = result.ok ? 0 : 1;
