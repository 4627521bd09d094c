# The test responder (tests/responder.py) in a container: the docker tier's stand-in engine for container mechanics.
# Build (scripts/docker-ci.sh does): docker build --network host -f tests/docker/responder.Dockerfile \
#   --build-arg BASE_IMAGE=hub-base:bookworm -t hub-responder:latest .   (the repository root: it copies a lock)
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# exactly locks/responder.txt (made from tests/docker/requirements.txt): no resolution, every file checked by hash
COPY locks/responder.txt /tmp/lock.txt
RUN python3 -m venv /opt/venv && pip install --no-cache-dir -q --no-deps --require-hashes -r /tmp/lock.txt
COPY tests/responder.py /app/responder.py
ENTRYPOINT ["python", "/app/responder.py"]
