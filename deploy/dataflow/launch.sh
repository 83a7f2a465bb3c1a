#!/usr/bin/env bash
# Build, launch, update and drain streamscore's Dataflow Flex Template (see deploy/README.md).
#
#   deploy/dataflow/launch.sh build          # Cloud Build: worker + launcher images, then the template spec
#   deploy/dataflow/launch.sh run            # a new job from the template
#   deploy/dataflow/launch.sh update         # replace the running job in place, keeping its state (--update)
#   deploy/dataflow/launch.sh drain          # stop reading, finish what is in flight, then stop
#
# Settings (environment; defaults in brackets):
#   PROJECT (required), REGION [europe-west1], TAG [git short hash], JOB [streamscore-stream]
#   REPO [$REGION-docker.pkg.dev/$PROJECT/streamscore], BUCKET [gs://$PROJECT-dataflow]
#   SERVICE_ACCOUNT [streamscore-dataflow@$PROJECT.iam.gserviceaccount.com]
#   MIN_WORKERS [1], MAX_WORKERS [10], MACHINE_TYPE [n2-standard-2]
#   STREAMING_MODE [exactly-once | at-least-once]
#   PARAMETERS [job parameters, comma-separated name=value, e.g. predictor=dns:///...:50051,registry=gs://...]
#   TRANSFORM_MAPPINGS [for update after a rename: OldName=NewName,...]
set -euo pipefail

cd "$(dirname "$0")/../.."
: "${PROJECT:?set PROJECT to the Google Cloud project id}"
REGION=${REGION:-europe-west1}
TAG=${TAG:-$(git rev-parse --short HEAD)}
JOB=${JOB:-streamscore-stream}
REPO=${REPO:-$REGION-docker.pkg.dev/$PROJECT/streamscore}
BUCKET=${BUCKET:-gs://$PROJECT-dataflow}
SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-streamscore-dataflow@$PROJECT.iam.gserviceaccount.com}
MIN_WORKERS=${MIN_WORKERS:-1}
MAX_WORKERS=${MAX_WORKERS:-10}
MACHINE_TYPE=${MACHINE_TYPE:-n2-standard-2}
STREAMING_MODE=${STREAMING_MODE:-exactly-once}
PARAMETERS=${PARAMETERS:-}
WORKER_IMAGE=$REPO/worker:$TAG
LAUNCHER_IMAGE=$REPO/launcher:$TAG
TEMPLATE=$BUCKET/templates/streamscore-$TAG.json

build() {
    # No local docker needed: Cloud Build builds both images from the repository root.
    cat > /tmp/streamscore-cloudbuild.yaml <<EOF
steps:
- name: gcr.io/cloud-builders/docker
  args: [build, -f, deploy/dataflow/worker.Dockerfile, -t, $WORKER_IMAGE, .]
- name: gcr.io/cloud-builders/docker
  args: [build, -f, deploy/dataflow/Dockerfile, --build-arg, WORKER_IMAGE=$WORKER_IMAGE, -t, $LAUNCHER_IMAGE, .]
images: [$WORKER_IMAGE, $LAUNCHER_IMAGE]
EOF
    gcloud builds submit --project "$PROJECT" --region "$REGION" --config /tmp/streamscore-cloudbuild.yaml .
    gcloud dataflow flex-template build "$TEMPLATE" --project "$PROJECT" \
        --image "$LAUNCHER_IMAGE" --sdk-language PYTHON --metadata-file deploy/dataflow/metadata.json
    echo "template: $TEMPLATE (worker image $WORKER_IMAGE)"
}

run_job() {  # $@: extra gcloud flags (--update, --transform-name-mappings)
    local experiments=()
    if [[ $STREAMING_MODE == at-least-once ]]; then
        experiments=(--additional-experiments streaming_mode_at_least_once)
    elif [[ $STREAMING_MODE != exactly-once ]]; then
        echo "STREAMING_MODE must be exactly-once or at-least-once, got '$STREAMING_MODE'" >&2; exit 2
    fi
    gcloud dataflow flex-template run "$JOB" --project "$PROJECT" --region "$REGION" \
        --template-file-gcs-location "$TEMPLATE" \
        --service-account-email "$SERVICE_ACCOUNT" \
        --staging-location "$BUCKET/staging" --temp-location "$BUCKET/tmp" \
        --enable-streaming-engine --num-workers "$MIN_WORKERS" --max-workers "$MAX_WORKERS" \
        --worker-machine-type "$MACHINE_TYPE" \
        "${experiments[@]}" \
        ${PARAMETERS:+--parameters "$PARAMETERS"} "$@"  # the worker image is baked into the launcher (main.py)
}

job_id() {
    gcloud dataflow jobs list --project "$PROJECT" --region "$REGION" --status active \
        --filter "name=$JOB" --format 'value(id)' | head -1
}

case "${1:-}" in
    build) build ;;
    run) run_job ;;
    update) run_job --update ${TRANSFORM_MAPPINGS:+--transform-name-mappings "$TRANSFORM_MAPPINGS"} ;;
    drain) gcloud dataflow jobs drain "$(job_id)" --project "$PROJECT" --region "$REGION" ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
esac
