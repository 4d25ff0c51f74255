# Gatehouse: one image for every role (web = console + gateway, worker, beat); see README "Production".
#
#   docker build -t gatehouse .                      # base: the official Python image (registry)
#   podman build --build-arg BASE_IMAGE=localhost/gatehouse-base:trixie ...   # a local base
#
# The base only needs Python 3.12+ with venv (tests/test_container.py builds one from Debian
# packages with mmdebstrap, where no registry can be reached). Every dependency installs from
# wheels (--only-binary): no compiler in the build stage, none in the final image.
ARG BASE_IMAGE=docker.io/library/python:3.13-slim-trixie

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt \
 && /opt/venv/bin/pip uninstall --yes pip
COPY . /app
# Static files and WhiteNoise's manifest, built once into the image (STATIC_ROOT is outside the
# data volume, so a volume never hides them). Throwaway build-only settings, never in the image.
RUN cd /app && DEBUG=0 SECRET_KEY=build-only-not-a-secret-build-only-not-a-secret-0000 \
    API_KEY_PEPPER=build-only-not-a-pepper-000000000 ALLOWED_HOSTS=build GATEHOUSE_VAR_DIR=/tmp/build-var \
    STATIC_ROOT=/app/staticfiles /opt/venv/bin/python manage.py collectstatic --no-input -v 0 \
 && rm -rf /tmp/build-var \
 && /opt/venv/bin/python -m compileall -q -x '/app/templates/' /app

FROM ${BASE_IMAGE}
# A fixed numeric user (no useradd: minimal bases may lack it); it owns only the data volume.
RUN echo "gatehouse:x:10001:10001:Gatehouse:/var/lib/gatehouse:/usr/sbin/nologin" >> /etc/passwd \
 && echo "gatehouse:x:10001:" >> /etc/group \
 && mkdir -p /var/lib/gatehouse /run/secrets \
 && chown 10001:10001 /var/lib/gatehouse
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DEBUG=0 \
    HOST=0.0.0.0 \
    GATEHOUSE_PORT=8000 \
    GATEHOUSE_VAR_DIR=/var/lib/gatehouse \
    STATIC_ROOT=/app/staticfiles \
    GATEHOUSE_COLLECTSTATIC=0
WORKDIR /app
USER 10001:10001
VOLUME ["/var/lib/gatehouse"]
EXPOSE 8000
STOPSIGNAL SIGTERM
# Liveness of the web role (worker and beat override it in compose.yaml).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["/app/scripts/entrypoint.sh", "health", "web"]
ENTRYPOINT ["/app/scripts/entrypoint.sh"]
CMD ["web"]
