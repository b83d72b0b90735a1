// Validate Kubernetes objects against the JSON schemas of npm's `kubernetes-models`
// (core kinds) and `@kubernetes-models/prometheus-operator` (PodMonitor,
// PrometheusRule, ...). Called by tests/ops/check_manifests.py:
//   node tests/ops/validate_models.mjs NODE_MODULES_DIR OBJECTS.json
// OBJECTS.json: [{"source": "...", "object": {...}}, ...]. Exit 1 on any invalid object.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const [modules, input] = process.argv.slice(2);
const items = JSON.parse(readFileSync(input, "utf8"));

async function load(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const file = group.endsWith("monitoring.coreos.com")
    ? join(modules, "@kubernetes-models/prometheus-operator", group, version, `${kind}.js`)
    : join(modules, "kubernetes-models", group || "", version, `${kind}.js`);
  try {
    return (await import(pathToFileURL(file).href))[kind];
  } catch {
    return undefined;
  }
}

let failed = 0;
for (const { source, object } of items) {
  const what = `${source}: ${object.kind}/${object.metadata?.name}`;
  const Model = await load(object.apiVersion, object.kind);
  if (!Model) {
    console.log(`FAIL ${what}: no model for ${object.apiVersion} ${object.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`ok   ${what} (${object.apiVersion})`);
  } catch (err) {
    console.log(`FAIL ${what}: ${err.message}`);
    failed++;
  }
}
console.log(`validate_models: ${items.length - failed} valid, ${failed} invalid`);
process.exit(failed ? 1 : 0);
