# syntax=docker/dockerfile:1
# The Dataflow SDK worker image: Beam's Python 3.11 SDK container (its boot entrypoint is kept),
# plus streamscore installed with exactly the versions of constraints.txt (apache-beam==2.77.0
# there matches the base image, so pip keeps Beam as shipped). Build context: the repository root.
#   docker build -f deploy/dataflow/worker.Dockerfile -t REGION-docker.pkg.dev/PROJECT/streamscore/worker:TAG .
# It runs as root: Beam's boot program installs staged artifacts under /opt/apache/beam as the
# image's user, and Dataflow starts SDK containers as built (see deploy/README.md).
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/streamscore
COPY constraints.txt pyproject.toml README.md ./
COPY streaming/ streaming/
COPY models/ models/
COPY protos/ protos/
COPY loadtest/ loadtest/
RUN pip install --no-cache-dir --disable-pip-version-check -c constraints.txt . \
 && pip check \
 && python -c "import apache_beam, streaming.job.pipeline; assert apache_beam.__version__ == '2.77.0', apache_beam.__version__"
WORKDIR /
