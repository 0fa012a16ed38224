#!/usr/bin/env bash
# Renders the base and every overlay with kubectl's kustomize and validates the result against
# the schemas of a pinned Kubernetes version, offline and strict (unknown fields are errors:
# the API server would drop them silently). Examples are validated file by file.
# Needs kubernetes-validate==1.37.0 (bundles the schemas, brings jsonschema + PyYAML) and
# kubectl (kustomize v5); scripts/install-deps.sh installs both into a virtualenv. Installs
# nothing itself.
#   manifests/validate.sh            # Kubernetes 1.33 (the k8s-openapi feature)
#   K8S_VERSION=1.35.0 manifests/validate.sh
# Custom resources have no upstream schema: PodChaos is checked against
# schemas/podchaos.schema.json (a subset of the Chaos Mesh CRD), ShoalPool against the schema
# of our own CRD (base/crd-shoalpool.yaml), closed so that unknown fields fail.
set -euo pipefail
cd "$(dirname "$0")"
K8S_VERSION="${K8S_VERSION:-1.33.0}"

for tool in kubernetes-validate kubectl; do
  command -v "$tool" >/dev/null || {
    echo "$tool not found: run scripts/install-deps.sh and put its virtualenv's bin/ on PATH" >&2
    exit 2
  }
done

failed=0
checked=0
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# The install shapes: every kustomization, rendered as `kubectl apply -k` would send it.
# Components (../components) are not shapes of their own: the overlays that use them are.
mapfile -t shapes < <(find . -name kustomization.yaml -not -path './schemas/*' -not -path './components/*' -printf '%h\n' | sort)
for dir in "${shapes[@]}"; do
  name="$(echo "${dir#./}" | tr '/' '_')"
  if ! kubectl kustomize "$dir" >"$out/$name.yaml" 2>"$out/$name.err"; then
    echo "FAIL $dir: kustomize: $(cat "$out/$name.err")" >&2
    failed=$((failed + 1))
    continue
  fi
  if kubernetes-validate --kubernetes-version "$K8S_VERSION" --strict --quiet "$out/$name.yaml"; then
    checked=$((checked + 1))
  else
    echo "FAIL $dir (rendered)" >&2
    failed=$((failed + 1))
  fi
done

# Examples: whole objects, applied by hand.
mapfile -t examples < <(find ./examples -name '*.yaml' | sort)
for f in "${examples[@]}"; do
  # Custom resources are checked by the python step below.
  if grep -q '^apiVersion: \(chaos-mesh.org\|shoal.io\)/' "$f"; then continue; fi
  if kubernetes-validate --kubernetes-version "$K8S_VERSION" --strict --quiet "$f"; then
    checked=$((checked + 1))
  else
    echo "FAIL $f" >&2
    failed=$((failed + 1))
  fi
done

# The python that kubernetes-validate was installed into has yaml and jsonschema. It sees the
# examples and the rendered shapes (kubernetes-validate only warns about kinds it has no schema
# for, such as cert-manager's Issuer).
if ! python3 - "${examples[@]}" "$out"/*.yaml <<'PY'
import ipaddress, json, sys, yaml, jsonschema
schema = json.load(open("schemas/podchaos.schema.json"))
issuer_schema = json.load(open("schemas/issuer.schema.json"))
# ShoalPool objects are checked against the openAPIV3Schema of our own CRD.
crd = next(d for d in yaml.safe_load_all(open("base/crd-shoalpool.yaml")) if d)
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
        if doc and doc.get("kind") == "PodChaos":
            errs = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
            for e in errs:
                print(f"ERROR {path}: PodChaos {'.'.join(map(str, e.path))}: {e.message}")
            bad += bool(errs)
        if doc and doc.get("kind") == "Issuer":
            errs = list(jsonschema.Draft7Validator(issuer_schema).iter_errors(doc))
            for e in errs:
                print(f"ERROR {path}: Issuer {'.'.join(map(str, e.path))}: {e.message}")
            bad += bool(errs)
        if doc and doc.get("kind") == "ShoalPool":
            pools += 1
            errs = list(jsonschema.Draft7Validator(pool_schema).iter_errors(doc))
            for a in doc.get("spec", {}).get("addresses", []):
                try:
                    ipaddress.ip_network(a, strict=False)
                except ValueError as e:
                    print(f"ERROR {path}: ShoalPool address {a!r}: {e}")
                    bad += 1
            for e in errs:
                print(f"ERROR {path}: ShoalPool {'.'.join(map(str, e.path))}: {e.message}")
            bad += bool(errs)
if pools == 0:
    print("ERROR no ShoalPool example checked")
    bad += 1
sys.exit(1 if bad else 0)
PY
then
  failed=$((failed + 1))
fi

echo "manifests: ${#shapes[@]} shapes rendered (${shapes[*]}), $checked documents valid against Kubernetes $K8S_VERSION (strict), custom resources checked, $failed failed"
[ "$failed" -eq 0 ]
