# A stand-in for the prom/prometheus image, for tests on a machine without a
# registry: Debian's prometheus package on the local runtime base. Laid out
# like the upstream image where docker-compose.yml relies on it: the binary
# is the entrypoint (compose passes every flag), it runs as nobody in
# /prometheus, and wget answers the health check as busybox's does there.
# Built by scripts/docker/test-compose.sh (with --network host, for the
# Debian mirror).
ARG BASE=sitewatch-local/runtime:bookworm
FROM ${BASE}
# No service is started during the build, and no manuals or translations are installed.
RUN set -eux; \
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/locale/*' \
      >/etc/dpkg/dpkg.cfg.d/sitewatch-slim; \
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; \
    chmod +x /usr/sbin/policy-rc.d; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus wget; \
    rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d; \
    install -d -o nobody -g nogroup /prometheus; \
    prometheus --version
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
