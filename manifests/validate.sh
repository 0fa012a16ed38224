#!/usr/bin/env bash
# Validates every manifest in this folder against the schemas of a pinned Kubernetes version,
# offline. Needs `pip install kubernetes-validate==1.37.0` (it bundles the schemas and brings
# jsonschema + PyYAML); installs nothing itself.
#   manifests/validate.sh            # validate against Kubernetes 1.33 (the k8s-openapi feature)
#   K8S_VERSION=1.35.0 manifests/validate.sh
# Custom resources have no upstream schema: PodChaos is checked against schemas/podchaos.schema.json
# (a subset of the Chaos Mesh CRD), kustomization.yaml against its known top-level keys.
set -euo pipefail
cd "$(dirname "$0")"
K8S_VERSION="${K8S_VERSION:-1.33.0}"

command -v kubernetes-validate >/dev/null || {
  echo "kubernetes-validate not found: pip install kubernetes-validate==1.37.0" >&2
  exit 2
}

mapfile -t files < <(find . -name '*.yaml' -not -path './schemas/*' | sort)
failed=0
checked=0
for f in "${files[@]}"; do
  case "$(basename "$f")" in
    kustomization.yaml) continue ;; # checked below
  esac
  # Custom resources are checked by the python step below.
  if grep -q '^apiVersion: \(chaos-mesh.org\|shoal.io\)/' "$f"; then continue; fi
  # --strict rejects unknown fields (typos), which the API server would drop silently.
  if kubernetes-validate --kubernetes-version "$K8S_VERSION" --strict --quiet "$f"; then
    checked=$((checked + 1))
  else
    echo "FAIL $f" >&2
    failed=$((failed + 1))
  fi
done

# The python that kubernetes-validate was installed into has yaml and jsonschema.
if ! python3 - "${files[@]}" <<'PY'
import json, sys, yaml, jsonschema
schema = json.load(open("schemas/podchaos.schema.json"))
# ShoalPool objects are checked against the openAPIV3Schema of our own CRD.
crd = next(d for d in yaml.safe_load_all(open("crd-shoalpool.yaml")) if d)
pool_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
def closed(s):
    # Structural schemas prune unknown fields; be strict here so typos fail.
    if s.get("type") == "object" and "properties" in s:
        s = dict(s, additionalProperties=False,
                 properties={k: closed(v) for k, v in s["properties"].items()})
        s["properties"].setdefault("apiVersion", {"type": "string"})
        s["properties"].setdefault("kind", {"type": "string"})
        s["properties"].setdefault("metadata", {"type": "object"})
    elif s.get("type") == "array" and "items" in s:
        s = dict(s, items=closed(s["items"]))
    return s
pool_schema = closed(pool_schema)
pools = 0
bad = 0
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        if doc.get("kind") == "PodChaos":
            errs = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
            for e in errs:
                print(f"ERROR {path}: PodChaos {'.'.join(map(str, e.path))}: {e.message}")
            bad += bool(errs)
        if doc.get("kind") == "ShoalPool":
            pools += 1
            errs = list(jsonschema.Draft7Validator(pool_schema).iter_errors(doc))
            import ipaddress
            for a in doc.get("spec", {}).get("addresses", []):
                try:
                    ipaddress.ip_network(a, strict=False)
                except ValueError as e:
                    print(f"ERROR {path}: ShoalPool address {a!r}: {e}")
                    bad += 1
            for e in errs:
                print(f"ERROR {path}: ShoalPool {'.'.join(map(str, e.path))}: {e.message}")
            bad += bool(errs)
        if path.endswith("kustomization.yaml"):
            known = {"apiVersion", "kind", "namespace", "labels", "resources", "images",
                     "configMapGenerator", "secretGenerator", "patches", "commonAnnotations"}
            extra = set(doc) - known
            missing = [r for r in doc.get("resources", []) if not __import__("os").path.exists(r)]
            if extra or missing:
                print(f"ERROR {path}: unknown keys {sorted(extra)}, missing resources {missing}")
                bad += 1
if pools == 0:
    print("ERROR no ShoalPool example checked")
    bad += 1
sys.exit(1 if bad else 0)
PY
then
  failed=$((failed + 1))
fi

# The rendered base too, when a kustomize is at hand (optional: the files above are the source).
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  rendered="$(mktemp --suffix=.yaml)"
  if kubectl kustomize . >"$rendered" &&
    kubernetes-validate --kubernetes-version "$K8S_VERSION" --strict --quiet "$rendered"; then
    checked=$((checked + 1))
  else
    echo "FAIL rendered kustomize base" >&2
    failed=$((failed + 1))
  fi
  rm -f "$rendered"
fi

echo "manifests: $checked files valid against Kubernetes $K8S_VERSION (strict), custom resources checked, $failed failed"
[ "$failed" -eq 0 ]
