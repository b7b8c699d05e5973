# Build the environment from uv.lock in one stage, copy it into a slim runtime that runs as
# a non-root user. uv itself comes pinned with hashes, as in .ci/setup.
FROM python:3.11-slim AS build
WORKDIR /src
COPY .ci/uv-requirements.txt /tmp/uv-requirements.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/uv-requirements.txt
ENV UV_PROJECT_ENVIRONMENT=/opt/scoregate UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1
# The sample stack (sample/, scoregate-dev) is a member of the uv workspace: its pyproject
# is needed to check the lock, its code is not, and only the product is installed (no
# extras, so neither the sample stack nor numpy).
COPY pyproject.toml uv.lock README.md ./
COPY sample/pyproject.toml ./sample/pyproject.toml
# The locked dependencies first (a layer that changes only with the lock), then the project.
RUN uv sync --locked --no-install-workspace --no-editable --package scoregate \
    --python /usr/local/bin/python3.11
COPY contracts ./contracts
COPY gateway ./gateway
COPY writeback ./writeback
RUN uv sync --locked --no-editable --package scoregate --python /usr/local/bin/python3.11

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 scoregate
COPY --from=build /opt/scoregate /opt/scoregate
ENV PATH=/opt/scoregate/bin:$PATH
USER scoregate
WORKDIR /home/scoregate
ENV SCOREGATE_REGISTRY=/etc/scoregate/registry.toml
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/live').status == 200 else 1)"
ENTRYPOINT ["scoregate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
