# priv_network node image. The build runs the README's own set-up (scripts/setup),
# so the image and a hand install are made the same way.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY priv_network ./priv_network
COPY node ./node
COPY registry ./registry
COPY webapp ./webapp
COPY migrations ./migrations
COPY scripts ./scripts
RUN scripts/setup

ENV PATH="/app/.venv/bin:$PATH" \
    PRIV_NETWORK_DATA=/data
VOLUME /data
EXPOSE 8700
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8700/healthz', timeout=4)"
ENTRYPOINT ["scripts/docker-entrypoint"]
