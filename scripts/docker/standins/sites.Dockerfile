# Local test sites for the compose test: the workspace's sitefarm.
ARG BASE=sitewatch-local/runtime:bookworm
FROM ${BASE}
COPY sitefarm /usr/local/bin/sitefarm
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sitefarm", "--http", "0.0.0.0:8080", "--https", "0.0.0.0:8443", "--self-signed", "0.0.0.0:8444"]
