#!/usr/bin/env bash
# Build the Gatehouse image with podman where no container registry can be reached (as on the
# test machines): a Debian trixie base made from Debian's own packages with mmdebstrap, imported
# into podman, then the Dockerfile on top of it. Elsewhere: `docker build -t gatehouse .`.
#
#   scripts/container-image.sh [IMAGE_TAG]        (default localhost/gatehouse:dev)
#
# Both steps are cached: the base is built once per package list (its tag carries a hash of it),
# and podman reuses the Dockerfile's layers, so only what changed is rebuilt (the dependency
# layer is rebuilt only when requirements.txt changes). Prints the image id last.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-localhost/gatehouse:dev}"
suite="${BASE_SUITE:-trixie}"   # Python 3.13; bookworm's 3.11 is too old for Django 6
packages="python3,python3-venv,ca-certificates"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
base="localhost/gatehouse-base:${suite}-$(printf '%s' "$suite $packages" | sha256sum | cut -c1-12)"

if ! podman image exists "$base"; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "Building the base image $base from Debian packages (mmdebstrap)..." >&2
  mmdebstrap --quiet --variant=minbase --include="$packages" "$suite" "$work/rootfs.tar" "$mirror" >&2
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    "$work/rootfs.tar" "$base" >&2
fi

# pip inside the build trusts what this host trusts: where outbound HTTPS goes through a proxy
# with its own certificate authority, the host's CA bundle is lent to the RUN steps (a build-time
# mount: it is not copied into the image).
mounts=()
host_ca=/etc/ssl/certs/ca-certificates.crt
if [ -r "$host_ca" ]; then
  conf_dir="$(mktemp -d)"
  trap 'rm -rf "${work:-}" "$conf_dir"' EXIT
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$conf_dir/pip.conf"
  mounts+=(--volume "$host_ca:/etc/ssl/certs/ca-certificates.crt:ro" --volume "$conf_dir/pip.conf:/etc/pip.conf:ro")
fi

# --isolation chroot: these machines refuse the namespaces podman's default runtime needs.
# --format docker: keeps HEALTHCHECK and STOPSIGNAL (the OCI format drops HEALTHCHECK).
podman build --quiet --isolation chroot --format docker --layers "${mounts[@]}" \
  --build-arg BASE_IMAGE="$base" --tag "$image" . >&2
podman image inspect --format '{{.Id}}' "$image"
