# Orderflow's container image: every role (ROLE=all|api|worker|relay) and
# every command (serve, migrate, token, gateway) from one image. The
# TypeScript sources run as they are on Node 24 (type stripping): there is no
# build step, only production dependencies to install.
#
#   podman build -t orderflow .                 (or docker build)
#   podman run --rm -p 8080:8080 --read-only orderflow
#
# Build arguments:
#   NODE_IMAGE  the Node 24 base (default: the official slim image). Where no
#               image registry is reachable, scripts/base-image.sh builds an
#               equivalent one from Debian packages and the npm registry.
#   VERSION, REVISION, SOURCE   the OCI labels (package version, commit, repository URL)
# Build secret:
#   npm_ca      an optional CA bundle that npm ci trusts in addition to
#               Node's own, for networks behind a TLS-inspecting proxy:
#               --secret id=npm_ca,src=/etc/ssl/certs/ca-certificates.crt
#
# No `# syntax=` line on purpose: it would make BuildKit fetch a frontend
# image from a registry. RUN --mount is understood by BuildKit's built-in
# frontend and by Buildah (podman build).
ARG NODE_IMAGE=docker.io/library/node:24-bookworm-slim

# 1. Production dependencies, exactly as package-lock.json pins them. The
# `node` devDependency (the Node binary npm scripts run on) is a dev
# dependency and stays out: the base image provides Node. No install script
# runs; no production dependency has one. patches/ (the PostgreSQL driver's
# fixes, docs/architecture.md "PostgreSQL goes away") is applied here, as
# npm's postinstall applies it elsewhere: patch-package is a development
# package, so everything is installed first and the development packages are
# pruned after it ran (clean-modules likewise).
FROM ${NODE_IMAGE} AS dependencies
WORKDIR /app
COPY package.json package-lock.json ./
COPY patches ./patches
RUN --mount=type=secret,id=npm_ca \
    if [ -s /run/secrets/npm_ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/npm_ca; fi \
 && npm ci --ignore-scripts --no-audit --no-fund --no-update-notifier --loglevel=warn \
 && node_modules/.bin/patch-package --error-on-fail \
 # Packages' tests, examples, docs and lint configs are never loaded at run
 # time: clean-modules' default globs (keeping every licence notice) remove
 # about 17 MB of them. It runs before the prune that removes it.
 && node_modules/.bin/clean-modules --yes --silent '!**/@(LICEN[CS]E|LICEN[CS]E.*|licen[cs]e*|COPYING*|NOTICE*)' \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund --no-update-notifier --loglevel=warn \
 && grep -q 'Orderflow patch' node_modules/postgres/src/connection.js \
 && test ! -e node_modules/node \
 # Source maps and type declarations are never loaded at run time (and Node
 # does not strip types under node_modules): about 20 MB.
 && find node_modules -type f \( -name '*.map' -o -name '*.ts' -o -name '*.mts' -o -name '*.cts' \) -delete

# 2. The base without what only builds need: npm, corepack, yarn, C headers
# and Node's documentation (14 MB of npm in scripts/base-image.sh's base;
# the official image also carries yarn, corepack and the headers). A running
# Orderflow needs none of them, and a tool that is not there cannot be abused.
FROM ${NODE_IMAGE} AS runtime-root
RUN rm -rf /usr/local/lib/node_modules /usr/local/bin/npm /usr/local/bin/npx \
      /usr/local/bin/corepack /usr/local/bin/yarn /usr/local/bin/yarnpkg /opt/yarn-v* \
      /usr/local/include /usr/local/share/doc /usr/local/share/man /usr/local/share/systemtap \
      /usr/local/bin/docker-entrypoint.sh /tmp/* \
 && node --version \
 && mkdir -p /app /data \
 && chown 1000:1000 /data \
 && chmod 0700 /data

# 3. The image: that root filesystem as one layer (a removal in a layer on top
# would not make the image any smaller), then the dependencies, then the code,
# so that a change to src/ rebuilds only the last, small layer.
FROM scratch
COPY --from=runtime-root / /
WORKDIR /app
COPY --from=dependencies /app/node_modules ./node_modules
COPY package.json ./
COPY src ./src

ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="Orderflow" \
      org.opencontainers.image.description="Order-processing backend: REST API, transactional pipeline, payments through a queue" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"

# Configuration comes from the environment (see the README); these are the
# image's defaults. The V8 heap flags are `npm start`'s (docs/operations.md):
# raise --max-old-space-size with the memory limit if you change what a
# process holds; npm start's --liftoff-only is not allowed in NODE_OPTIONS.
# DATA_DIR is the only place Orderflow writes, so the root
# filesystem can be read-only: mount a volume (embedded database, the
# development issuer's key) or a tmpfs there.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    NODE_ENV=production \
    NODE_OPTIONS="--max-semi-space-size=4 --max-old-space-size=160" \
    # glibc: fewer malloc arenas, freed memory handed back (docs/performance.md, embedded memory).
    MALLOC_ARENA_MAX=2 \
    MALLOC_TRIM_THRESHOLD_=131072 \
    HOST=0.0.0.0 \
    PORT=8080 \
    DATA_DIR=/data
VOLUME /data
EXPOSE 8080
USER 1000:1000

# Readiness, not liveness: /readyz answers 200 once the database answers and
# its schema is current. Node itself makes the request (slim images have no
# curl); it follows PORT if the container changes it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.PORT}/readyz`, { signal: AbortSignal.timeout(2500) }).then((r) => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))"]

# Node is PID 1 and handles SIGTERM itself: it drains (requests, jobs) for up
# to 25 s and exits 0. Give the container a longer stop timeout than that.
STOPSIGNAL SIGTERM
# Tracing loads before the application (--import), as with `npm start`: it
# stays off unless OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_TRACES_EXPORTER) is
# set; see docs/operations.md "Traces".
ENTRYPOINT ["node", "--import", "./src/observability/instrument.ts", "src/main.ts"]
CMD ["serve"]
