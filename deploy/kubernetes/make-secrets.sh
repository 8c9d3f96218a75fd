#!/usr/bin/env bash
# Turns a `wdml certs` directory into the Kubernetes Secrets of a run (docs/kubernetes.md).
#
#   wdml certs --out tls --nodes 4                      # on your machine, not in the cluster
#   deploy/kubernetes/make-secrets.sh tls | kubectl apply --server-side -f -
#
# prints the Secrets (YAML) on stdout:
#   wdml-tls-coordinator   ca.pem, coordinator.pem, coordinator.key
#   wdml-tls-nodes         ca.pem, and node-k.pem / node-k.key for nodes 0-511
#   wdml-tls-nodes-1       node-k.pem / node-k.key for nodes 512-1023 (beyond 512
#   wdml-tls-nodes-2 ...   nodes only: a Secret may hold 1 MiB, about 1,090 nodes')
# The StatefulSet `node` projects them into one volume, and mounts into each pod only
# ca.pem and that node's two files. ca.key (it issues certificates) and the
# observer's key never leave the directory.
#
#   deploy/kubernetes/make-secrets.sh --patch tls > nodes-patch.yaml
#   kubectl -n wdml patch statefulset node --patch-file nodes-patch.yaml
#
# prints instead the patch that sets the StatefulSet's replicas to the N node
# certificates found and its certificate volume to those Secrets; set
# nodes.count = N in the scenario too.
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

# Nodes per Secret: a Secret may hold 1 MiB of data, and a node's certificate and key
# (wdml certs: ECDSA P-256) are about 960 bytes, so 512 nodes fill half of one. Node k
# is in part k / 512: wdml-tls-nodes, then wdml-tls-nodes-1, -2, ...
per=512
parts=$(((n + per - 1) / per))
part_name() {
    if [ "$1" -eq 0 ]; then echo wdml-tls-nodes; else echo "wdml-tls-nodes-$1"; fi
}

if [ "$mode" = patch ]; then
    cat <<EOF
# The StatefulSet \`node\` for the $n node certificates of $dir (make-secrets.sh --patch):
#   kubectl -n $namespace patch statefulset node --patch-file THIS_FILE
# Set nodes.count = $n in the scenario (ConfigMap wdml-scenario) too.
spec:
  replicas: $n
  template:
    spec:
      volumes:
        - name: tls
          projected:
            defaultMode: 0440
            sources:
EOF
    for ((p = 0; p < parts; p++)); do
        printf '              - secret:\n                  name: %s\n' "$(part_name "$p")"
    done
    exit 0
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
# Part p's files; ca.pem in the first only: the parts are projected into one volume,
# where a path may not repeat.
part_files() {
    local first=$(($1 * per)) k
    local last=$((first + per < n ? first + per : n))
    [ "$1" -gt 0 ] || echo "$dir/ca.pem"
    for ((k = first; k < last; k++)); do
        echo "$dir/node-$k.pem"
        echo "$dir/node-$k.key"
    done
}
# Every part checked before anything is printed: no half set of Secrets to apply.
for ((p = 0; p < parts; p++)); do
    mapfile -t files < <(part_files "$p")
    bytes=$(cat "${files[@]}" | wc -c)
    if [ "$bytes" -gt 1048576 ]; then
        fail "$(part_name "$p") would hold $bytes bytes, more than the 1 MiB a Secret may hold (keys larger than wdml certs makes?)"
    fi
done
names=()
for ((p = 0; p < parts; p++)); do
    mapfile -t files < <(part_files "$p")
    header "$(part_name "$p")" node
    for f in "${files[@]}"; do
        printf '  %s: %s\n' "${f##*/}" "$(b64 "$f")"
    done
    names+=("$(part_name "$p")")
done
echo "make-secrets.sh: Secrets wdml-tls-coordinator and ${names[*]} ($n nodes) for namespace $namespace" >&2
[ "$parts" -eq 1 ] \
    || echo "make-secrets.sh: $parts Secrets for the nodes: apply the StatefulSet patch of --patch, which projects them all" >&2
