#!/usr/bin/env bash
# Turns a `wdml certs` directory into the Kubernetes Secrets of a run (docs/kubernetes.md).
#
#   wdml certs --out tls --nodes 4                      # on your machine, not in the cluster
#   deploy/kubernetes/make-secrets.sh tls | kubectl apply --server-side -f -
#
# prints two Secrets (YAML) on stdout:
#   wdml-tls-coordinator   ca.pem, coordinator.pem, coordinator.key
#   wdml-tls-nodes         ca.pem, and node-k.pem / node-k.key for every node k
# The StatefulSet `node` mounts into each pod only ca.pem and that node's two files.
# ca.key (it issues certificates) and the observer's key never leave the directory.
#
#   deploy/kubernetes/make-secrets.sh --patch tls > nodes-patch.yaml
#   kubectl -n wdml patch statefulset node --patch-file nodes-patch.yaml
#
# prints instead the patch that sets the StatefulSet's replicas to the N node
# certificates found (`kubectl scale` does the same); set nodes.count = N in the
# scenario too.
#
# Options: --namespace NS (default wdml). Apply with --server-side (or kubectl
# create): a client-side apply copies the whole Secret into an annotation, which may
# hold 256 KiB only (about 200 nodes' certificates).
set -euo pipefail

namespace=wdml
mode=secrets
dir=
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit "${1:-2}"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --namespace) [ $# -ge 2 ] || usage; namespace="$2"; shift 2 ;;
        --namespace=*) namespace="${1#*=}"; shift ;;
        --patch) mode="patch"; shift ;;
        -h|--help) usage 0 ;;
        -*) echo "make-secrets.sh: unknown option $1" >&2; usage ;;
        *) [ -z "$dir" ] || usage; dir="$1"; shift ;;
    esac
done
[ -n "$dir" ] || usage
fail() { echo "make-secrets.sh: $*" >&2; exit 1; }
[ -d "$dir" ] || fail "$dir is not a directory (make it with: wdml certs --out $dir --nodes N)"
for f in ca.pem coordinator.pem coordinator.key; do
    [ -s "$dir/$f" ] || fail "$dir/$f is missing (make it with: wdml certs --out $dir --nodes N)"
done

# The nodes: node-0 … node-(N-1), every one with its certificate and key.
n=0
while [ -e "$dir/node-$n.pem" ] || [ -e "$dir/node-$n.key" ]; do
    [ -s "$dir/node-$n.pem" ] || fail "$dir/node-$n.pem is missing or empty"
    [ -s "$dir/node-$n.key" ] || fail "$dir/node-$n.key is missing or empty"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || fail "$dir holds no node-0.pem: make the certificates with wdml certs --out $dir --nodes N"
for f in "$dir"/node-*.pem "$dir"/node-*.key; do
    k="${f##*/node-}"
    k="${k%.*}"
    case "$k" in *[!0-9]*|'') fail "unexpected file $f" ;; esac
    [ "$k" -lt "$n" ] || fail "$f: node ids must run from 0 without gaps, and node-$n is missing"
done

if [ "$mode" = patch ]; then
    cat <<EOF
# The StatefulSet \`node\` for the $n node certificates of $dir (make-secrets.sh --patch):
#   kubectl -n $namespace patch statefulset node --patch-file THIS_FILE
# Set nodes.count = $n in the scenario (ConfigMap wdml-scenario) too.
spec:
  replicas: $n
EOF
    exit 0
fi

# A Secret may hold 1 MiB of data; the nodes' one grows by about a kilobyte per node.
bytes=$(cat "$dir/ca.pem" "$dir"/node-*.pem "$dir"/node-*.key | wc -c)
if [ "$bytes" -gt 1048576 ]; then
    fail "the $n nodes' certificates and keys are $bytes bytes, more than the 1 MiB a Secret may hold: split the nodes over several StatefulSets and Secrets (docs/kubernetes.md, 1,000 devices)"
fi

b64() { base64 <"$1" | tr -d '\n'; }
header() {
    cat <<EOF
---
# Made by deploy/kubernetes/make-secrets.sh from $dir; holds private keys: do not
# commit it.
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: $namespace
  labels:
    app.kubernetes.io/name: wdml
    app.kubernetes.io/component: $2
    app.kubernetes.io/part-of: wdml
type: Opaque
data:
EOF
}

header wdml-tls-coordinator coordinator
for f in ca.pem coordinator.pem coordinator.key; do
    printf '  %s: %s\n' "$f" "$(b64 "$dir/$f")"
done
header wdml-tls-nodes node
printf '  ca.pem: %s\n' "$(b64 "$dir/ca.pem")"
for ((k = 0; k < n; k++)); do
    printf '  node-%d.pem: %s\n' "$k" "$(b64 "$dir/node-$k.pem")"
    printf '  node-%d.key: %s\n' "$k" "$(b64 "$dir/node-$k.key")"
done
echo "make-secrets.sh: Secrets wdml-tls-coordinator and wdml-tls-nodes ($n nodes) for namespace $namespace" >&2
