#!/usr/bin/env bash
# Builds the `wdml` image with no registry: a fully static release binary, built on
# this machine, copied into an image `FROM scratch` (see Dockerfile).
#
#   scripts/docker-build.sh            # builds target/static/…/wdml and the image wdml:latest
#   WDML_IMAGE=wdml:dev scripts/docker-build.sh
#
# The static build has its own target directory (target/static) so that it does not
# invalidate the dev build's cache. A first build takes several minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${WDML_IMAGE:-wdml:latest}"
TARGET=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="${WDML_STATIC_TARGET_DIR:-target/static}"

echo "== static release binary ($TARGET, crt-static) in $CARGO_TARGET_DIR"
# --target keeps RUSTFLAGS away from build scripts and proc macros (they stay dynamic).
RUSTFLAGS="-C target-feature=+crt-static ${RUSTFLAGS:-}" \
    cargo build --release --locked --target "$TARGET" --bin wdml
BIN="$CARGO_TARGET_DIR/$TARGET/release/wdml"

# The image has no libc to fall back on: refuse a dynamic binary here, not at run time
# (no program interpreter, no needed shared library).
ELF_INFO="$(readelf --program-headers --dynamic "$BIN")"
if grep -q -e INTERP -e NEEDED <<<"$ELF_INFO"; then
    echo "error: $BIN is dynamically linked:" >&2
    ldd "$BIN" >&2 || true
    exit 1
fi
"$BIN" --version

echo "== image $IMAGE"
# The Dockerfile copies target/static/image/wdml (the binary, stripped of its symbols);
# .dockerignore keeps the build context to that one file. Nothing is pulled: BuildKit
# when the buildx plugin is there, else the classic builder (Debian's docker.io ships
# no buildx; the classic builder then warns that it is deprecated).
mkdir -p target/static/image
strip -o target/static/image/wdml "$BIN"
if docker buildx version >/dev/null 2>&1; then
    docker build --quiet -t "$IMAGE" . >/dev/null
else
    DOCKER_BUILDKIT=0 docker build --quiet -t "$IMAGE" . >/dev/null
fi
docker image ls "$IMAGE"
