#!/usr/bin/env bash
# Makes sure the official Google Cloud Pub/Sub emulator and a Java 17+ runtime are present.
# Idempotent: prints nothing and exits 0 when both are already installed.
set -euo pipefail

have_emulator() {
  [ -n "${PUBSUB_EMULATOR_BIN:-}" ] && [ -x "${PUBSUB_EMULATOR_BIN}" ] && return 0
  for d in /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk /opt/google-cloud-sdk "${HOME}/google-cloud-sdk"; do
    [ -x "$d/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ] && return 0
  done
  if command -v gcloud >/dev/null 2>&1; then
    root=$(dirname "$(dirname "$(readlink -f "$(command -v gcloud)")")")
    [ -x "$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ] && return 0
  fi
  return 1
}

have_java() {
  command -v java >/dev/null 2>&1 || return 1
  v=$(java -version 2>&1 | awk -F'"' '/version/ {print $2}' | cut -d. -f1)
  [ "${v:-0}" -ge 17 ] 2>/dev/null
}

if have_emulator && have_java; then exit 0; fi

echo "install-emulator: Pub/Sub emulator or Java 17 missing; installing with apt-get" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! have_java; then
  $SUDO apt-get update -q && $SUDO apt-get install -y -q openjdk-17-jre-headless
fi
if ! have_emulator; then
  if ! apt-cache policy google-cloud-cli-pubsub-emulator 2>/dev/null | grep -q Candidate; then
    # Google's apt repository (https://cloud.google.com/sdk/docs/install#deb).
    $SUDO apt-get install -y -q apt-transport-https ca-certificates gnupg curl
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | $SUDO gpg --dearmor --yes -o /usr/share/keyrings/cloud.google.gpg
    echo "deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt cloud-sdk main" \
      | $SUDO tee /etc/apt/sources.list.d/google-cloud-sdk.list >/dev/null
    $SUDO apt-get update -q
  fi
  $SUDO apt-get install -y -q google-cloud-cli google-cloud-cli-pubsub-emulator
fi
have_emulator && have_java || { echo "install-emulator: could not install the Pub/Sub emulator; see README" >&2; exit 1; }
