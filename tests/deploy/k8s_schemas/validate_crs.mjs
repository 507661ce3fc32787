// Validates custom resources against the published schemas of the @kubernetes-models/* npm packages
// (generated from the projects' CRDs). stdin: a JSON list of objects; stdout: a JSON list of
// {kind, name, error} (error null when valid). Run by tests/deploy/test_k8s.py with NODE_PATH at the package cache.
import { pathToFileURL } from "node:url";
import path from "node:path";

const MODELS = {
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
};

const root = process.argv[2];
let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const obj of JSON.parse(input)) {
  const base = MODELS[obj.apiVersion];
  const name = obj.metadata?.name;
  if (!base) {
    results.push({ kind: obj.kind, name, error: `no schema package for ${obj.apiVersion}` });
    continue;
  }
  const file = path.join(root, "node_modules", base, `${obj.kind}.js`); // past "exports": one model per file
  const mod = await import(pathToFileURL(file).href);
  try {
    new mod[obj.kind](obj).validate();
    results.push({ kind: obj.kind, name, error: null });
  } catch (err) {
    results.push({ kind: obj.kind, name, error: String(err.message ?? err) });
  }
}
process.stdout.write(JSON.stringify(results));
