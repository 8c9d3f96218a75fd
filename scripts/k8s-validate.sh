#!/usr/bin/env bash
# Validates the Kubernetes manifests offline (no cluster): every object in
# deploy/kubernetes/*.yaml, the Secrets that deploy/kubernetes/make-secrets.sh prints
# (from stand-in certificate directories) and the StatefulSet after its --patch, for 6
# nodes and for 1,100 (split over three Secrets), against the OpenAPI schemas of the Kubernetes versions below with
# kubernetes-validate --strict (an unknown field, a wrong type, a missing required
# field, an unknown kind or apiVersion fail); then checks what no schema can:
# selectors match their pod labels, Services select pods and name their ports, the
# StatefulSet's headless Service exists, every referenced ConfigMap / Secret / PVC is
# made here or by make-secrets.sh, every $(VAR) is defined before it is used, the
# scenario's nodes.count equals the replicas and each node mounts only its own key.
#
#   bash scripts/k8s-validate.sh [DIR]        # DIR: default deploy/kubernetes
#
# (DIR may be any copy of it, e.g. with one manifest broken on purpose.)
#
# Ends with one line `k8s-validate: N passed, M failed` (each object against each
# version, and each check) and exits non-zero if anything failed. Installs PyPI's
# kubernetes-validate (pinned) into a virtualenv under ${TMPDIR:-/tmp} the first time.
# Knobs: K8S_VALIDATE_VERSIONS (default "1.28 1.37": the oldest version the
# manifests need, and the newest the pinned kubernetes-validate knows).
set -euo pipefail
if [ $# -gt 0 ]; then
    [ -d "$1" ] || { echo "k8s-validate: no directory $1" >&2; echo "k8s-validate: 0 passed, 1 failed"; exit 1; }
    DIR="$(cd "$1" && pwd)"
fi
cd "$(dirname "$0")/.."
DIR="${DIR:-deploy/kubernetes}"
VERSIONS="${K8S_VALIDATE_VERSIONS:-1.28 1.37}"
PACKAGE="kubernetes-validate==1.37.0"
VENV="${TMPDIR:-/tmp}/wdml-k8s-validate-venv"

summary() {
    echo "k8s-validate: $1 passed, $2 failed"
}

# --- kubernetes-validate, pinned, in a virtualenv of its own (falls back to this
# interpreter's pip where the venv module is missing).
PY="$VENV/bin/python"
if ! "$PY" -c 'import kubernetes_validate, yaml' >/dev/null 2>&1 \
    || [ "$("$PY" -m kubernetes_validate --version 2>/dev/null)" != "${PACKAGE#*==}" ]; then
    if python3 -m venv "$VENV" >/dev/null 2>&1; then
        installed() { "$PY" -m pip install --quiet --disable-pip-version-check "$PACKAGE"; }
    else
        rm -rf "$VENV"
        PY=python3
        installed() { python3 -m pip install --quiet --disable-pip-version-check "$PACKAGE"; }
    fi
    installed || { echo "k8s-validate: cannot install $PACKAGE from PyPI" >&2; summary 0 1; exit 1; }
fi

[ -d "$DIR" ] || { echo "k8s-validate: no directory $DIR" >&2; summary 0 1; exit 1; }
mapfile -t FILES < <(find "$DIR" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
[ "${#FILES[@]}" -gt 0 ] || { echo "k8s-validate: no manifest in $DIR" >&2; summary 0 1; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/k8s-validate.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0

# --- What make-secrets.sh prints, from stand-in `wdml certs` directories (the
# Secrets' shape is checked, not the certificates), and the StatefulSet patched: for 6
# nodes (one Secret) and for 1,100 (split over three, each file as large as a real one).
GENERATED=()
standin() { # N DIR [BYTES]: ca, coordinator, observer and N nodes' files
    local n="$1" dir="$2" pad k ext f
    pad="$(head -c "${3:-0}" /dev/zero | tr '\0' 'A')"
    mkdir -p "$dir"
    for f in ca.pem ca.key coordinator.pem coordinator.key observer.pem observer.key; do
        printf -- '-----BEGIN STAND-IN-----\n%s\n-----END STAND-IN-----\n' "$f" >"$dir/$f"
    done
    for ((k = 0; k < n; k++)); do
        for ext in pem key; do
            printf -- '-----BEGIN STAND-IN-----\nnode-%s.%s%s\n-----END STAND-IN-----\n' "$k" "$ext" "$pad" \
                >"$dir/node-$k.$ext"
        done
    done
}
# NAME N BYTES: make-secrets.sh and its --patch on N stand-in nodes whose files are
# about BYTES each; the patch applied to the StatefulSet as `kubectl patch` would (a
# strategic merge: replicas, and volumes by name) and checked to hold nothing else,
# every node's two files in exactly one Secret, ca.pem once, no Secret over 1 MiB, and
# the patched volume projecting exactly the Secrets printed.
secrets_case() {
    local name="$1" n="$2" bytes="$3"
    standin "$n" "$WORK/$name/certs" "$bytes"
    if bash "$DIR/make-secrets.sh" "$WORK/$name/certs" >"$WORK/$name/secrets.yaml" 2>"$WORK/$name/err" \
        && bash "$DIR/make-secrets.sh" --patch "$WORK/$name/certs" >"$WORK/$name/patch.yaml" 2>>"$WORK/$name/err"; then
        echo "PASS make-secrets.sh: Secrets and StatefulSet patch for $n stand-in nodes"
        passed=$((passed + 1))
        GENERATED+=("$WORK/$name/secrets.yaml")
    else
        echo "FAIL make-secrets.sh ($n nodes): $(tr '\n' ' ' <"$WORK/$name/err")"
        failed=$((failed + 1))
        return
    fi
    if grep -q -e 'ca\.key' -e 'observer\.key' "$WORK/$name/secrets.yaml"; then
        echo "FAIL make-secrets.sh ($n nodes): its Secrets carry ca.key or observer.key"
        failed=$((failed + 1))
    else
        echo "PASS make-secrets.sh ($n nodes): neither ca.key nor observer.key in the Secrets"
        passed=$((passed + 1))
    fi
    if "$PY" - "$n" "$WORK/$name/secrets.yaml" "$WORK/$name/patch.yaml" "$WORK/$name/patched.yaml" \
        "${FILES[@]}" <<'EOF'
import base64, sys, yaml
n, secrets_file, patch_file, out, files = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
secrets = [d for d in yaml.safe_load_all(open(secrets_file)) if d]
nodes = [d for d in secrets if d["metadata"]["name"].startswith("wdml-tls-nodes")]
keys = [k for d in nodes for k in d["data"]]
want = ["ca.pem"] + ["node-%d.%s" % (k, e) for k in range(n) for e in ("pem", "key")]
if sorted(keys) != sorted(want):
    sys.exit("the nodes' Secrets do not hold ca.pem once and every node's two files once")
for d in nodes:
    size = sum(len(base64.b64decode(v)) for v in d["data"].values())
    if size > 1 << 20:
        sys.exit("%s holds %d bytes, more than a Secret may" % (d["metadata"]["name"], size))
patch = yaml.safe_load(open(patch_file))
volumes = patch["spec"]["template"]["spec"]["volumes"]
if set(patch["spec"]) != {"replicas", "template"} or patch["spec"]["template"] != {"spec": {"volumes": volumes}} \
        or [v["name"] for v in volumes] != ["tls"] or patch["spec"]["replicas"] != n:
    sys.exit("the patch holds more than the replicas (%d) and the tls volume: %r" % (n, patch))
projected = [s["secret"]["name"] for s in volumes[0]["projected"]["sources"]]
if projected != [d["metadata"]["name"] for d in nodes]:
    sys.exit("the patch projects %s, the Secrets printed are %s" % (projected, [d["metadata"]["name"] for d in nodes]))
for f in files:
    for doc in yaml.safe_load_all(open(f)):
        if doc and doc.get("kind") == "StatefulSet":
            doc["spec"]["replicas"] = n
            pod = doc["spec"]["template"]["spec"]
            pod["volumes"] = [next((p for p in volumes if p["name"] == v["name"]), v) for v in pod["volumes"]]
            yaml.safe_dump(doc, open(out, "w"), sort_keys=False)
            sys.exit(0)
sys.exit("no StatefulSet to patch")
EOF
    then
        echo "PASS make-secrets.sh ($n nodes): each node's files in one Secret of at most 1 MiB, all projected by the patch"
        passed=$((passed + 1))
        GENERATED+=("$WORK/$name/patched.yaml")
    else
        echo "FAIL make-secrets.sh --patch ($n nodes): the Secrets or the patch are not what the StatefulSet needs"
        failed=$((failed + 1))
    fi
}
if [ -f "$DIR/make-secrets.sh" ]; then
    secrets_case six 6 0
    # About 480 bytes a file: a wdml certs node's certificate and key are 960 together.
    secrets_case many 1100 420
fi

# --- The schemas: each object against each version. kubernetes-validate only warns
# about a kind or apiVersion it has no schema for; that counts as a failure here.
for version in $VERSIONS; do
    set +e
    "$PY" -m kubernetes_validate --strict --kubernetes-version "$version" \
        "${FILES[@]}" "${GENERATED[@]}" >"$WORK/out" 2>&1
    rc=$?
    set -e
    sed -e "s#$WORK/\([a-z]*\)/secrets.yaml#(make-secrets.sh output, \1 nodes)#" \
        -e "s#$WORK/\([a-z]*\)/patched.yaml#(node StatefulSet after make-secrets.sh --patch, \1 nodes)#" "$WORK/out"
    ok=$(grep -c '^INFO .* passed for resource' "$WORK/out" || true)
    bad=$(grep -c -e '^ERROR' -e '^WARN' -e '^FATAL' "$WORK/out" || true)
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
        # A file it could not read or parse: one failure, with its message above.
        bad=1
    fi
    passed=$((passed + ok))
    failed=$((failed + bad))
done

# --- What the schemas cannot see (the manifests and make-secrets.sh's Secrets).
set +e
"$PY" - "${FILES[@]}" "${GENERATED[@]:0:1}" >"$WORK/checks" 2>&1 <<'EOF'
import re, sys, yaml
try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

files = [f for f in sys.argv[1:] if f]
docs = []
for f in files:
    for doc in yaml.safe_load_all(open(f)):
        if isinstance(doc, dict):
            docs.append(doc)
results = []
def check(ok, what):
    results.append(ok)
    print(("PASS " if ok else "FAIL ") + what)

def name(d):
    return "%s/%s" % (d["kind"], d["metadata"]["name"])

namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
defined = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}
workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]
services = [d for d in docs if d["kind"] == "Service"]

for d in docs:
    if d["kind"] == "Namespace":
        continue
    ns = d["metadata"].get("namespace")
    check(ns in namespaces, "%s is in a namespace made here (%s)" % (name(d), ns))

for w in workloads:
    spec = w["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    selector = spec.get("selector", {}).get("matchLabels", {})
    check(bool(selector) and all(labels.get(k) == v for k, v in selector.items()),
          "%s: its selector matches its pod labels" % name(w))
    pod = spec["template"]["spec"]
    ns = w["metadata"].get("namespace")
    for v in pod.get("volumes", []):
        for kind, key, field in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName"),
                                 ("PersistentVolumeClaim", "persistentVolumeClaim", "claimName")):
            # A volume of its own, or a projected volume's sources.
            for source in [v] + v.get("projected", {}).get("sources", []):
                if key in source:
                    ref = source[key].get(field, source[key].get("name"))
                    check((kind, ns, ref) in defined,
                          "%s: volume %s's %s %s is made here or by make-secrets.sh" % (name(w), v["name"], kind, ref))
    volume_names = {v["name"] for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        seen = set()
        ok = True
        for e in c.get("env", []):
            for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                if ref not in seen:
                    ok = False
                    print("     %s: env %s uses $(%s) before it is defined" % (name(w), e["name"], ref))
            seen.add(e["name"])
        for m in c.get("volumeMounts", []):
            for ref in re.findall(r"\$\((\w+)\)", m.get("subPathExpr", "")):
                if ref not in seen:
                    ok = False
                    print("     %s: mount %s uses $(%s), which is not in the env" % (name(w), m["name"], ref))
            if m["name"] not in volume_names:
                ok = False
                print("     %s: mount %s names no volume" % (name(w), m["name"]))
        check(ok, "%s: container %s: every $(VAR) defined before use, every mount has its volume"
              % (name(w), c["name"]))
    if w["kind"] == "StatefulSet":
        svc = [s for s in services if s["metadata"]["name"] == spec.get("serviceName")
               and s["metadata"].get("namespace") == ns]
        check(len(svc) == 1 and svc[0]["spec"].get("clusterIP") == "None",
              "%s: its serviceName %s is a headless Service made here" % (name(w), spec.get("serviceName")))

for s in services:
    sel = s["spec"].get("selector", {})
    ns = s["metadata"].get("namespace")
    pods = [w for w in workloads if w["metadata"].get("namespace") == ns and sel
            and all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
    check(len(pods) >= 1, "%s selects the pods of %s" % (name(s), ", ".join(name(w) for w in pods) or "nothing"))
    for p in s["spec"].get("ports", []):
        target = p.get("targetPort", p["port"])
        found = any(cp.get("name") == target or cp.get("containerPort") == target
                    for w in pods for c in w["spec"]["template"]["spec"]["containers"] for cp in c.get("ports", []))
        check(found, "%s: port %s reaches a container port (%s)" % (name(s), p.get("name", p["port"]), target))

# The scenario and the nodes: one count.
scenario = [d for d in docs if d["kind"] == "ConfigMap" and "scenario.toml" in d.get("data", {})]
nodes = [w for w in workloads if w["kind"] == "StatefulSet"]
if scenario and nodes:
    text = scenario[0]["data"]["scenario.toml"]
    if tomllib:
        count = tomllib.loads(text).get("nodes", {}).get("count")
    else:
        m = re.search(r"^\s*count\s*=\s*(\d+)", text, re.M)
        count = int(m.group(1)) if m else None
    replicas = nodes[0]["spec"].get("replicas", 1)
    check(count == replicas, "scenario nodes.count (%s) = replicas of %s (%s)" % (count, name(nodes[0]), replicas))
    if not isinstance(replicas, int):
        replicas = 0
    # Each node mounts ca.pem and its own two files of the nodes' Secret, by its id,
    # and is told their paths; no list of nodes.
    spec = nodes[0]["spec"]["template"]["spec"]
    # Volumes of whole Secrets: a secret volume, or a projection of Secrets only, with
    # no list of items (which would name nodes).
    secrets = lambda v: [v["secret"]] if "secret" in v else [s.get("secret") for s in v.get("projected", {}).get("sources") or [{}]]
    secret_volumes = {v["name"] for v in spec["volumes"] if all(x is not None and not x.get("items") for x in secrets(v))}
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    mounts = {m["mountPath"]: m.get("subPathExpr", m.get("subPath")) for m in container.get("volumeMounts", [])
              if m["name"] in secret_volumes}
    want = {env.get("WDML_TLS_CA"): "ca.pem",
            env.get("WDML_TLS_CERT"): "node-$(WDML_NODE_ID).pem",
            env.get("WDML_TLS_KEY"): "node-$(WDML_NODE_ID).key"}
    check(mounts == want and None not in want,
          "%s: each node mounts only ca.pem and its own node-k.pem / node-k.key, at the paths WDML_TLS_CA/CERT/KEY give"
          % name(nodes[0]))

print("checks: %d passed, %d failed" % (results.count(True), results.count(False)))
EOF
rc=$?
set -e
grep -v '^checks:' "$WORK/checks" || true
counts=$(sed -n 's/^checks: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$WORK/checks")
if [ "$rc" -ne 0 ] || [ -z "$counts" ]; then
    # The checker itself broke (e.g. a manifest it cannot read): one failure.
    failed=$((failed + 1))
else
    passed=$((passed + ${counts% *}))
    failed=$((failed + ${counts#* }))
fi

summary "$passed" "$failed"
[ "$failed" -eq 0 ]
