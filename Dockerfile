# cipa-proxy: the CIPA filtering forward proxy (mitmproxy inside).
#
#   docker build -t cipa-proxy .
#   docker run -p 3128:3128 -p 9464:9464 \
#     -v $PWD/config.yaml:/etc/cipa-proxy/config.yaml:ro -v $PWD/rules:/etc/cipa-proxy/rules:ro \
#     -v cipa-ca:/var/lib/cipa-proxy/ca -v cipa-audit:/var/log/cipa-proxy cipa-proxy
#
# Mount points:
#   /etc/cipa-proxy/config.yaml  the config (a file: bind-mount it; the repo's config.yaml is the default)
#   /etc/cipa-proxy/rules        the category rules (bind-mount to replace the bundled ones)
#   /var/lib/cipa-proxy/ca       the district CA (tls.confdir): keep it in a named volume, browsers trust it
#   /var/log/cipa-proxy          the audit log (audit.path): the district's monitoring record
# The default config's relative paths (tls.confdir: ca, audit.path: audit) resolve next to the
# config file; /etc/cipa-proxy/ca and /etc/cipa-proxy/audit link to the two volumes above.

FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The project, installed with the locked versions; the source tree is not kept in the image.
# gcc only for the build: proxy/_visible.c (the page-text extractor of the content scanner;
# setup.py builds it, and would fall back to slower Python without it). Removed afterwards.
WORKDIR /tmp/src
COPY pyproject.toml setup.py constraints.txt README.md ./
COPY proxy ./proxy
COPY addons ./addons
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir -c constraints.txt . \
    && (cd / && python -c "import proxy._visible") \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* /tmp/src
WORKDIR /

# A system user without a shell or home; it owns only the CA and audit directories.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cipa \
    && mkdir -p /etc/cipa-proxy /var/lib/cipa-proxy/ca /var/log/cipa-proxy \
    && chown cipa:cipa /var/lib/cipa-proxy/ca /var/log/cipa-proxy \
    && chmod 0700 /var/lib/cipa-proxy/ca \
    && chmod 0750 /var/log/cipa-proxy \
    && ln -s /var/lib/cipa-proxy/ca /etc/cipa-proxy/ca \
    && ln -s /var/log/cipa-proxy /etc/cipa-proxy/audit

COPY config.yaml /etc/cipa-proxy/config.yaml
COPY rules /etc/cipa-proxy/rules

# State that must outlive the container. Config and rules are bind-mount points, not VOLUMEs:
# an anonymous volume over the rules would keep serving old rules after an image upgrade.
VOLUME ["/var/lib/cipa-proxy/ca", "/var/log/cipa-proxy"]

USER 10001:10001
# So that `docker run IMAGE check URL` and `... lint` find ./config.yaml.
WORKDIR /etc/cipa-proxy

# 3128: the proxy; 9464: Prometheus /metrics, /healthz, /readyz (metrics.listen).
EXPOSE 3128 9464

# No curl in the slim image: python's urllib (a non-2xx answer or no answer exits non-zero).
# It assumes metrics.listen keeps port 9464 on all addresses or 127.0.0.1 (the default config).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]

# Exec form: cipa-proxy is PID 1 and gets SIGTERM directly (clean shutdown, audit flushed).
ENTRYPOINT ["cipa-proxy"]
CMD ["run", "--config", "/etc/cipa-proxy/config.yaml"]
