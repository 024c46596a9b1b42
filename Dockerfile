# One image for every service; each compose service picks its part with `command: [run, NAME]`.
# BASE_IMAGE lets a machine without a registry build on a local stand-in (see README, "Offline base image").
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/services \
    SMARTHOME_HEALTH_FILE=/tmp/healthy

# Dependencies first, in their own layer, so code changes rebuild in a second.
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && useradd --system --uid 10001 --no-create-home smarthome

COPY services /app/services
USER smarthome
WORKDIR /app
ENTRYPOINT ["python", "-m", "smarthome"]
CMD ["--help"]
