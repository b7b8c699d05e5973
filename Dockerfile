# Build a wheel in one stage, install it into a slim runtime as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY gateway ./gateway
COPY writeback ./writeback
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 scoregate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER scoregate
WORKDIR /home/scoregate
ENV SCOREGATE_REGISTRY=/etc/scoregate/registry.toml
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/live').status == 200 else 1)"
ENTRYPOINT ["scoregate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
