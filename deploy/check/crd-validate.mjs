// Validates custom resources against their CRDs' OpenAPI schemas, as compiled by the npm
// packages @kubernetes-models/keda and @kubernetes-models/prometheus-operator.
// Input (stdin): a JSON array of objects. Output: one line per object; exit 1 on any error.
// Kinds without a schema package here (RabbitmqCluster) are checked in checks.py instead.
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";
import { ServiceMonitor, PrometheusRule, PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = {
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "keda.sh/v1alpha1/TriggerAuthentication": TriggerAuthentication,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PodMonitor": PodMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
};

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const objects = JSON.parse(Buffer.concat(chunks).toString("utf8"));
let failed = 0;
for (const obj of objects) {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const name = `${obj.kind}/${obj.metadata?.name}`;
  const Model = models[key];
  if (!Model) {
    console.log(`  FAIL  ${name}: no schema for ${key}`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`  ok    ${name} valid against the ${key} CRD schema`);
  } catch (e) {
    console.log(`  FAIL  ${name} against the ${key} CRD schema: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
