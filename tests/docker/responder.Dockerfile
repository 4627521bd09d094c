# The test responder (tests/responder.py) in a container: the docker tier's stand-in engine for container mechanics.
# Build (scripts/docker-ci.sh does): docker build --network host -f tests/docker/responder.Dockerfile \
#   --build-arg BASE_IMAGE=hub-base:bookworm -t hub-responder:latest tests
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && pip install --no-cache-dir -q starlette uvicorn
COPY responder.py /app/responder.py
ENTRYPOINT ["python", "/app/responder.py"]
