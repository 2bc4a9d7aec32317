#!/usr/bin/env bash
# Builds a Node 24 base image equivalent to the official node:24-bookworm-slim
# from Debian packages and the npm registry alone, for build hosts that reach
# no image registry. The Dockerfile takes it as its NODE_IMAGE build argument:
#
#   scripts/base-image.sh                      # prints the tag it built
#   podman build --build-arg NODE_IMAGE=localhost/orderflow-node:24.21.0-bookworm-slim …
#
# What it holds, like the official image: Debian bookworm (minbase, merged
# /usr, no documentation, manuals or translations), Node at /usr/local/bin/node
# and npm at /usr/local/lib/node_modules/npm, a user `node` (uid and gid 1000)
# and `node` as its command. Node is the binary of the pinned `node`
# devDependency (package-lock.json): the npm registry's node-linux-<arch>
# package carries the official release binary. Yarn and corepack are left
# out; Orderflow uses neither.
#
# Environment:
#   NODE_VERSION    default: the version package-lock.json pins
#   NPM_VERSION     default: the npm that Node 24.21.0 bundles (its changelog)
#   DEBIAN_SUITE    default: bookworm, as node:24-bookworm-slim
#   DEBIAN_MIRROR   default: mmdebstrap's (deb.debian.org, with updates and security)
#   CONTAINER_TOOL  podman (default) or docker: whose image store receives it
#   BASE_IMAGE_TAG  default: localhost/orderflow-node:<NODE_VERSION>-<suite>-slim
#
# Needs root (mmdebstrap's root mode), mmdebstrap, npm and the container tool.
# Takes well under a minute on a warm network; the Debian part is most of it.
set -euo pipefail
cd "$(dirname "$0")/.."

node_version=${NODE_VERSION:-$(sed -n '/"node_modules\/node": {/,/}/s/.*"version": "\([^"]*\)".*/\1/p' package-lock.json)}
if [[ -z "$node_version" ]]; then
  echo "base-image: cannot read the pinned node version from package-lock.json; set NODE_VERSION" >&2
  exit 1
fi
npm_version=${NPM_VERSION:-11.19.0}
suite=${DEBIAN_SUITE:-bookworm}
tool=${CONTAINER_TOOL:-podman}
tag=${BASE_IMAGE_TAG:-localhost/orderflow-node:${node_version}-${suite}-slim}

case "$(dpkg --print-architecture)" in
  amd64) node_arch=x64 ;;
  arm64) node_arch=arm64 ;;
  *) echo "base-image: no Node binary package for $(dpkg --print-architecture)" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# npm pack checks each tarball against the integrity the registry publishes.
(cd "$work" && npm pack --silent "node-linux-${node_arch}@${node_version}" "npm@${npm_version}" >/dev/null)
node_tgz="$work/node-linux-${node_arch}-${node_version}.tgz"
npm_tgz="$work/npm-${npm_version}.tgz"

mirrors=()
[[ -n "${DEBIAN_MIRROR:-}" ]] && mirrors=("$DEBIAN_MIRROR")

# The hooks run outside the chroot with the root filesystem as $1. What
# mmdebstrap and its hooks print goes to a log, shown only if it fails.
log="$work/mmdebstrap.log"
if ! mmdebstrap --quiet --variant=minbase --format=tar \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook="tar -xzf '$node_tgz' -C \"\$1/usr/local\" --strip-components=1 --no-same-owner package/bin/node" \
  --customize-hook="mkdir -p \"\$1/usr/local/lib/node_modules/npm\" && tar -xzf '$npm_tgz' -C \"\$1/usr/local/lib/node_modules/npm\" --strip-components=1 --no-same-owner" \
  --customize-hook='ln -s ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm" && ln -s ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/local/bin/npx"' \
  --customize-hook='chroot "$1" groupadd --gid 1000 node && chroot "$1" useradd --uid 1000 --gid node --shell /bin/bash --create-home node' \
  --customize-hook='chroot "$1" node --version >/dev/null && chroot "$1" npm --version >/dev/null' \
  "$suite" - "${mirrors[@]}" 2>"$log" |
  "$tool" import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV NODE_VERSION=${node_version}" \
    --change 'CMD ["node"]' \
    - "$tag" >/dev/null; then
  cat "$log" >&2
  echo "base-image: building $tag failed" >&2
  exit 1
fi

echo "$tag"
