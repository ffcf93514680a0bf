#!/usr/bin/env node
// Compile the AudiFi reference contracts offline with the npm `solc` package.
//
//   node scripts/compile_contracts.mjs          # (re)write contracts/build/*.json, abis/*.json
//   node scripts/compile_contracts.mjs --check  # compile in memory; exit 1 listing stale files
//
// Inputs: every *.sol under contracts/src (recursively; contracts/src/test/ holds test-only
// contracts), imports of `@openzeppelin/...` resolved from node_modules, compiler settings from
// contracts/solc-settings.json (evmVersion cancun: OpenZeppelin 5 needs mcopy, py-evm cannot run
// solc 0.8.37's default osaka).
//
// Outputs (deterministic: keys sorted recursively, 2-space indent, trailing newline):
//   contracts/build/<Name>.json  {abi, bytecode, contractName, deployedBytecode, sourceHash}
//   abis/<Name>.json             ABI array, production contracts only (PRODUCTION below)
//
// sourceHash recipe (mirrored by indexer/contracts.py::compute_source_hash -- keep in sync):
//   sha256 hex of the UTF-8 bytes of canonical JSON (keys sorted recursively, separators ","
//   and ":" with no whitespace, non-ASCII left unescaped) of the object
//     {
//       "compiler": {"solc": <package-lock.json packages["node_modules/solc"].version>,
//                    "openzeppelin": <packages["node_modules/@openzeppelin/contracts"].version>},
//       "settings": <contracts/solc-settings.json, parsed>,
//       "sources":  {<path relative to contracts/src, "/"-separated>: <sha256 hex of file bytes>}
//     }
//   One hash covers all sources; every artifact carries it.

import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const SRC_DIR = path.join(ROOT, "contracts", "src");
const BUILD_DIR = path.join(ROOT, "contracts", "build");
const ABI_DIR = path.join(ROOT, "abis");
const SETTINGS_FILE = path.join(ROOT, "contracts", "solc-settings.json");
const LOCK_FILE = path.join(ROOT, "package-lock.json");
const NODE_MODULES = path.join(ROOT, "node_modules");

const PRODUCTION = [
  "ArtistCoin",
  "ArtistCoinFactory",
  "DividendDistributor",
  "MasterRegistry",
  "MasterShares",
];

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = sortKeys(value[key]);
    return out;
  }
  return value;
}

const canonicalJson = (value) => JSON.stringify(sortKeys(value));
const prettyJson = (value) => JSON.stringify(sortKeys(value), null, 2) + "\n";
const sha256Hex = (data) => createHash("sha256").update(data).digest("hex");

function listSources(dir, prefix = "") {
  const found = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) found.push(...listSources(path.join(dir, entry.name), rel));
    else if (entry.isFile() && entry.name.endsWith(".sol")) found.push(rel);
  }
  return found.sort();
}

function lockedVersions() {
  const lock = JSON.parse(readFileSync(LOCK_FILE, "utf8"));
  const pkgs = lock.packages ?? {};
  const solcVersion = pkgs["node_modules/solc"]?.version;
  const ozVersion = pkgs["node_modules/@openzeppelin/contracts"]?.version;
  if (!solcVersion || !ozVersion) throw new Error(`solc / @openzeppelin/contracts not in ${LOCK_FILE}`);
  return { solc: solcVersion, openzeppelin: ozVersion };
}

function findImport(importPath) {
  if (importPath.startsWith("@openzeppelin/")) {
    const file = path.join(NODE_MODULES, importPath);
    if (existsSync(file)) return { contents: readFileSync(file, "utf8") };
    return { error: `not found: ${file} (run npm ci)` };
  }
  return { error: `unsupported import ${importPath}` };
}

function compile() {
  const compiler = lockedVersions();
  if (!solc.version().startsWith(`${compiler.solc}+`)) {
    throw new Error(`solc ${solc.version()} != package-lock ${compiler.solc}; run npm ci`);
  }
  const settings = JSON.parse(readFileSync(SETTINGS_FILE, "utf8"));
  const relPaths = listSources(SRC_DIR);
  const sources = {};
  const sourceDigests = {};
  for (const rel of relPaths) {
    const bytes = readFileSync(path.join(SRC_DIR, rel));
    sourceDigests[rel] = sha256Hex(bytes);
    sources[`contracts/src/${rel}`] = { content: bytes.toString("utf8") };
  }
  const sourceHash = sha256Hex(
    Buffer.from(canonicalJson({ compiler, settings, sources: sourceDigests }), "utf8"),
  );

  const input = { language: "Solidity", sources, settings };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const diagnostics = output.errors ?? [];
  for (const d of diagnostics) process.stderr.write(`${d.formattedMessage ?? d.message}\n`);
  if (diagnostics.some((d) => d.severity === "error")) throw new Error("compilation failed");

  const files = new Map(); // absolute path -> content
  const seen = new Set();
  for (const unit of Object.keys(sources)) {
    for (const [name, c] of Object.entries(output.contracts?.[unit] ?? {})) {
      if (seen.has(name)) throw new Error(`duplicate contract name ${name}`);
      seen.add(name);
      const artifact = {
        contractName: name,
        abi: c.abi,
        bytecode: `0x${c.evm.bytecode.object}`,
        deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
        sourceHash,
      };
      files.set(path.join(BUILD_DIR, `${name}.json`), prettyJson(artifact));
      if (PRODUCTION.includes(name)) files.set(path.join(ABI_DIR, `${name}.json`), prettyJson(c.abi));
    }
  }
  for (const name of PRODUCTION) {
    if (!seen.has(name)) throw new Error(`production contract ${name} not found in sources`);
  }
  return files;
}

function main() {
  const check = process.argv.includes("--check");
  const files = compile();
  const stale = [];
  for (const [file, content] of files) {
    const current = existsSync(file) ? readFileSync(file, "utf8") : null;
    if (current === content) continue;
    stale.push(path.relative(ROOT, file));
    if (!check) {
      mkdirSync(path.dirname(file), { recursive: true });
      writeFileSync(file, content);
    }
  }
  // Orphans: artifacts/ABIs whose contract no longer exists (removed unless --check).
  for (const dir of [BUILD_DIR, ABI_DIR]) {
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir)) {
      const file = path.join(dir, f);
      if (!f.endsWith(".json") || files.has(file)) continue;
      stale.push(`${path.relative(ROOT, file)} (orphan${check ? "" : ", removed"})`);
      if (!check) rmSync(file);
    }
  }
  if (check) {
    if (stale.length) {
      process.stderr.write(
        `stale contract outputs (run: node scripts/compile_contracts.mjs):\n  ${stale.join("\n  ")}\n`,
      );
      process.exit(1);
    }
    process.stdout.write(`contract outputs up to date (${files.size} files)\n`);
  } else {
    process.stdout.write(`${stale.length} of ${files.size} outputs changed\n`);
    for (const f of stale) process.stdout.write(`  ${f}\n`);
  }
}

try {
  main();
} catch (err) {
  process.stderr.write(`compile_contracts: ${err.message}\n`);
  process.exit(2);
}
