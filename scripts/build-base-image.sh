#!/usr/bin/env bash
# Build a Debian bookworm base image with Python 3.11 from Debian's own packages, without any
# container registry: debootstrap (minbase) a root file system, then `docker import` it.
#
# The Dockerfiles default to python:3.11-slim; on machines that cannot pull it, build this
# image once and pass it as BASE_IMAGE (`make base-image images BASE_IMAGE=rakuten-serving/base:bookworm`).
# Bookworm's python3 is 3.11 (/usr/bin/python3), the Python the images need.
#
#   scripts/build-base-image.sh [IMAGE]      # default rakuten-serving/base:bookworm
#
# Skips the build when IMAGE already exists (FORCE=1 rebuilds). Needs root, debootstrap and a
# running Docker engine. apt uses plain HTTP (packages are checked against Debian's keyring).
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR,
#      SUITE (default bookworm), EXTRA_PACKAGES (comma-separated), FORCE=1, UPGRADE=0 to skip
#      applying bookworm-updates/security updates.
set -euo pipefail

IMAGE="${1:-${BASE_IMAGE_NAME:-rakuten-serving/base:bookworm}}"
SUITE="${SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
DOCKER="${DOCKER:-docker}"
# python3-venv: `python3 -m venv` with pip (builder stage); ca-certificates: HTTPS to S3/MLflow.
PACKAGES="python3,python3-venv,ca-certificates${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}"

if [[ "${FORCE:-0}" != 1 ]] && "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "build-base-image: $IMAGE exists (FORCE=1 rebuilds)"
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "build-base-image: debootstrap needs root" >&2
  exit 2
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "build-base-image: installing debootstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

ROOTFS="$(mktemp -d "${TMPDIR:-/var/tmp}/rakuten-base.XXXXXX")"
chmod 755 "$ROOTFS"  # becomes the image's /: mktemp's 0700 would lock non-root users out
cleanup() {
  # A failed chroot step could leave these mounted: never rm -rf through a mount.
  for m in proc dev/pts; do mountpoint -q "$ROOTFS/$m" && umount -l "$ROOTFS/$m" || true; done
  rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

start=$SECONDS
echo "build-base-image: debootstrap $SUITE ($PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
  > "$ROOTFS.log" 2>&1 || { tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
echo "build-base-image: debootstrap done in $((SECONDS - start)) s"

cat > "$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# Images stay small: no documentation, no man pages, no recommended packages.
cat > "$ROOTFS/etc/apt/apt.conf.d/90rakuten-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
cat > "$ROOTFS/etc/dpkg/dpkg.cfg.d/90rakuten-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF

if [[ "${UPGRADE:-1}" == 1 ]]; then
  echo "build-base-image: applying $SUITE-updates and $SUITE-security"
  mount -t proc proc "$ROOTFS/proc"
  chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -qq && apt-get -y -qq dist-upgrade && apt-get clean' > "$ROOTFS.log" 2>&1 \
    || { tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
  rm -f "$ROOTFS.log"
  umount "$ROOTFS/proc"
fi

# What a registry image would not carry: package caches, lists, docs, logs.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/tmp/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
find "$ROOTFS/var/log" -type f -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true

echo "build-base-image: importing as $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . | "$DOCKER" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase $SUITE + $PACKAGES" - "$IMAGE" >/dev/null
echo "build-base-image: $IMAGE built in $((SECONDS - start)) s ($("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
