#!/usr/bin/env bash
# Build the real Dockerfile with podman, from a Debian base made here, no Docker engine or registry needed.
#
#   tests/deploy/build_image.sh build        make the base (once, cached) and `podman build` the image
#   tests/deploy/build_image.sh podman ARGS  run podman with the same storage and containers.conf
#   tests/deploy/build_image.sh check        exit 0 when podman can run a container here, else say why, exit 77
# `build` exits 77 too (the reason on stdout) when debootstrap cannot make the base.
#
# The base: `debootstrap --variant=minbase bookworm` with Debian's python3.11 and python3-venv, packed
# into .cache/image/base-bookworm.tar (kept: the next build skips debootstrap) and `podman import`ed as
# $BASE_IMAGE; the Dockerfile's PYTHON_IMAGE build argument points at it. pip inside the build reaches
# its packages the way the host's pip does: the host's effective pip configuration (`pip config list`,
# PIP_* variables included) is written to one pip.conf passed as the build secret `pipconf`, and the
# local paths it names (find-links folders, file:// indexes, the CA bundle, constraint files) are
# mounted read-only into the RUN steps. TORCH_INDEX_URL is the host's index (PyPI unless configured);
# on this machine the CPU build of torch comes from a find-links folder of that configuration.
# Storage lives under .cache/image/storage (overlay where the kernel allows it, else vfs); containers.conf
# runs runc with `default_ulimits = []` (crun refuses hybrid cgroups, runc cannot set RLIMIT_NOFILE here).
# Root only: rootless podman needs subuid ranges and fuse-overlayfs, which this script does not set up.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${MOE_IMAGE_CACHE:-$ROOT/.cache/image}"
IMAGE="${MOE_IMAGE:-localhost/moe-prefetch:test}"
BASE_IMAGE="${MOE_BASE_IMAGE:-localhost/moe-base:bookworm-python3.11}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$CACHE"

export CONTAINERS_CONF="$CACHE/containers.conf"
cat > "$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
EOF

say() { echo "build_image: $*" >&2; }

_driver() {
    # The storage root remembers its driver: pick once (overlay if it works), then keep it.
    if [ -s "$CACHE/driver" ]; then cat "$CACHE/driver"; return; fi
    local d=vfs
    if podman --root "$CACHE/probe" --runroot "$CACHE/probe-run" --storage-driver overlay info >/dev/null 2>&1; then
        d=overlay
    fi
    rm -rf "$CACHE/probe" "$CACHE/probe-run"
    echo "$d" > "$CACHE/driver"
    echo "$d"
}

pm() {
    podman --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver "$(_driver)" "$@"
}

check() {
    local why=""
    if [ "$(id -u)" -ne 0 ]; then why="not root (the build and run here use rootful podman)"
    elif ! command -v podman >/dev/null; then why="podman is not installed (.ci/system-deps installs it)"
    elif ! command -v runc >/dev/null; then why="runc is not installed (.ci/system-deps installs it)"
    elif ! command -v debootstrap >/dev/null && [ ! -s "$CACHE/base-$SUITE.tar" ]; then
        why="debootstrap is not installed and no cached base (.ci/system-deps installs it)"
    fi
    if [ -z "$why" ]; then
        # Can podman run a container at all? A throwaway image of the host's /bin/true and its libraries.
        local probe out
        probe="$(mktemp -d)"
        # shellcheck disable=SC2046
        cp -L --parents /bin/true $(ldd /bin/true | grep -o '/[^ ]*') "$probe/"
        if ! out="$(tar -C "$probe" -c . | pm import - localhost/moe-probe:latest 2>&1 >/dev/null &&
            pm run --rm --network host --read-only --user 10001:10001 localhost/moe-probe:latest /bin/true 2>&1)"; then
            why="podman cannot run a container here: $(echo "$out" | grep -v systemd | tail -n 3)"
        fi
        rm -rf "$probe"
        pm rmi --force localhost/moe-probe:latest >/dev/null 2>&1 || true
    fi
    if [ -n "$why" ]; then echo "$why"; exit 77; fi
}

base() {
    if pm image exists "$BASE_IMAGE"; then return; fi
    local tar="$CACHE/base-$SUITE.tar"
    if [ ! -s "$tar" ]; then
        local t0=$SECONDS rootfs="$CACHE/rootfs"
        rm -rf "$rootfs"
        say "debootstrap --variant=minbase $SUITE (python3, python3-venv) from $MIRROR"
        if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
            # Where debootstrap cannot run (no mirror, no mknod/chroot) the image cannot be built: exit 77.
            echo "debootstrap cannot make the base here: $(tail -n 3 "$CACHE/debootstrap.log" | tr '\n' ' ')"
            tail -n 30 "$CACHE/debootstrap.log" >&2
            rm -rf "$rootfs"
            exit 77
        fi
        # What a container base needs no more of: apt lists and caches, docs and man pages.
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
            "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
        tar -C "$rootfs" --numeric-owner -cf "$tar.part" . && mv "$tar.part" "$tar"
        rm -rf "$rootfs"
        say "base rootfs: $(du -h "$tar" | cut -f1) in $((SECONDS - t0)) s"
    fi
    pm import --change 'CMD ["/bin/bash"]' "$tar" "$BASE_IMAGE" >/dev/null
}

# The host's effective pip configuration as one [global] pip.conf (the build secret), and the -v
# mounts for the local paths it names.
pip_conf() {
    local conf="$CACHE/pip.conf" mounts="$CACHE/pip.mounts"
    (umask 077 && : > "$conf")  # it may hold a mirror's credentials: the secret is never in a layer
    "$PYTHON" - "$conf" "$mounts" <<'EOF'
import os, re, subprocess, sys
conf, mounts = sys.argv[1:]
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True).stdout
values = {}
for line in out.splitlines():
    m = re.fullmatch(r"(:env:|[\w-]+)\.([\w-]+)='(.*)'", line.strip())
    if m is None:
        continue
    scope, key, value = m.groups()
    section = "global" if scope in (":env:", "global") else scope
    if scope == ":env:" or (section, key) not in values:  # PIP_* variables win over files
        values[(section, key)] = value
paths = set()
for (_, key), value in values.items():
    for word in value.split():
        path = word[len("file://"):] if word.startswith("file://") else word
        if key.endswith("index-url") and word.startswith("file://"):
            path = os.path.dirname(path.rstrip("/"))  # a local index's pages link to files beside it
        if path.startswith("/") and os.path.exists(path):
            paths.add(os.path.realpath(path))
with open(conf, "w") as f:
    for section in sorted({s for s, _ in values}):
        f.write(f"[{section}]\n")
        for (s, key), value in sorted(values.items()):
            if s == section:
                f.write(f"{key} = {value}\n")
with open(mounts, "w") as f:
    for p in sorted(paths):
        f.write(f"{p}\n")
EOF
}

build() {
    local t0=$SECONDS
    base
    say "base image $BASE_IMAGE ready in $((SECONDS - t0)) s"
    pip_conf
    local index
    index="$(sed -n 's/^index-url = //p' "$CACHE/pip.conf" | head -n1)"
    index="${index:-https://pypi.org/simple}"
    local args=()
    while read -r p; do args+=(--volume "$p:$p:ro"); done < "$CACHE/pip.mounts"
    local t1=$SECONDS
    say "podman build $IMAGE (torch from $index and the pip configuration's find-links)"
    # docker format: OCI image configs have no HEALTHCHECK.
    pm build --format docker --network host \
        --build-arg PYTHON_IMAGE="$BASE_IMAGE" \
        --build-arg TORCH_INDEX_URL="$index" \
        --secret id=pipconf,src="$CACHE/pip.conf" \
        "${args[@]}" \
        --tag "$IMAGE" --file "$ROOT/Dockerfile" "$ROOT"
    say "image $IMAGE built in $((SECONDS - t1)) s ($((SECONDS - t0)) s with the base), driver $(_driver)"
}

case "${1:-build}" in
    build) check; build ;;
    check) check ;;
    podman) shift; pm "$@" ;;
    *) echo "usage: $0 build|check|podman ARGS" >&2; exit 2 ;;
esac
