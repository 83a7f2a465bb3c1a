# syntax=docker/dockerfile:1
# The predictor image: `streamscore serve`, installed with exactly constraints.txt's versions,
# run as an unprivileged user. Build context: the repository root.
#   docker build -f deploy/k8s/predictor.Dockerfile -t REGION-docker.pkg.dev/PROJECT/streamscore/predictor:TAG .
ARG PYTHON_BASE=python:3.11.14-slim-bookworm

FROM ${PYTHON_BASE} AS build
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY streaming/ streaming/
COPY models/ models/
COPY protos/ protos/
COPY loadtest/ loadtest/
RUN python -m venv /opt/streamscore \
 && /opt/streamscore/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt . \
 && /opt/streamscore/bin/pip check

FROM ${PYTHON_BASE}
RUN groupadd --gid 10001 streamscore \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin streamscore
COPY --from=build /opt/streamscore /opt/streamscore
ENV PATH=/opt/streamscore/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1
USER 10001:10001
EXPOSE 50051 9464
ENTRYPOINT ["streamscore"]
CMD ["serve", "--help"]
