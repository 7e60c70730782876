# PostgreSQL 15 for the compose test override, on machines that cannot pull the official
# `postgres` image: Debian's postgresql-15 on the locally made Debian base, with an
# entrypoint that follows the official image's basics (POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB, initdb into the /var/lib/postgresql/data volume on the first start,
# scram-sha-256 for TCP connections, pg_isready for a healthcheck).
# scripts/docker/local-images.sh builds it as sitewatch-local/postgres:15:
#   docker build --network host --build-arg BASE=sitewatch-local/runtime:bookworm \
#     -t sitewatch-local/postgres:15 -f scripts/docker/postgres.Dockerfile scripts/docker
ARG BASE=sitewatch-local/runtime:bookworm
FROM ${BASE}

ENV PG_MAJOR=15 \
    LANG=C.UTF-8 \
    PGDATA=/var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:${PATH}

# No cluster is made at install time (the entrypoint makes one in the volume), no
# service is started during the build, and no manuals or translations are installed.
RUN set -eux; \
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/locale/*' \
      >/etc/dpkg/dpkg.cfg.d/sitewatch-slim; \
    mkdir -p /etc/postgresql-common/createcluster.d; \
    echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/no-main-cluster.conf; \
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; \
    chmod +x /usr/sbin/policy-rc.d; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}"; \
    rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d; \
    test ! -e "/var/lib/postgresql/${PG_MAJOR}/main"; \
    install -d -o postgres -g postgres -m 3777 /var/run/postgresql; \
    install -d -o postgres -g postgres -m 700 "$PGDATA"; \
    mkdir -p /docker-entrypoint-initdb.d; \
    postgres --version

COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh

VOLUME /var/lib/postgresql/data
EXPOSE 5432
# Fast shutdown, as the official image: open connections do not hold `docker stop` up.
STOPSIGNAL SIGINT
HEALTHCHECK --interval=2s --timeout=5s --start-period=60s --retries=15 \
    CMD pg_isready -q -h /var/run/postgresql || exit 1
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
