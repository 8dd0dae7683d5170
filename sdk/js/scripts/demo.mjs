// Compiles the SDK to plain ES modules for the demo web app (examples/web/sdk/), which hubbub
// serves at /demo from files built into its binary: the copy is committed so that building
// the server never needs node.
//
//   node scripts/demo.mjs            write examples/web/sdk/
//   node scripts/demo.mjs --check    exit 1 if the committed copy is stale (a test runs this)
//
// The modules are tsc's output (tsconfig.demo.json: no declarations, no source maps); the
// type-only modules compile to near-empty files and are kept, since others import them.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
const target = resolve(root, "../../examples/web/sdk");
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const check = process.argv.includes("--check");

/** Every file under `dir`, as paths relative to it, sorted. */
function files(dir) {
  const out = [];
  const walk = (d) => {
    for (const entry of readdirSync(d, { withFileTypes: true })) {
      const path = join(d, entry.name);
      if (entry.isDirectory()) walk(path);
      else out.push(relative(dir, path));
    }
  };
  walk(dir);
  return out.sort();
}

function compile(outDir) {
  execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.demo.json"), "--outDir", outDir], { stdio: "inherit" });
}

if (check) {
  const tmp = mkdtempSync(join(tmpdir(), "hubbub-demo-sdk-"));
  try {
    compile(tmp);
    let committed = [];
    try {
      committed = files(target);
    } catch {
      // No copy at all: stale.
    }
    const built = files(tmp);
    const stale =
      built.length !== committed.length ||
      built.some((f, i) => f !== committed[i] || !readFileSync(join(tmp, f)).equals(readFileSync(join(target, f))));
    if (stale) {
      console.error("examples/web/sdk is stale: run `npm run build:demo` in sdk/js and commit the result");
      process.exit(1);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
} else {
  rmSync(target, { recursive: true, force: true });
  compile(target);
  console.log(`wrote ${relative(process.cwd(), target) || "."}: ${files(target).length} modules`);
}
