#!/bin/sh
# The compose `train` job: train into $MCSERVE_MODEL_DIR unless a valid artifact is already
# there. MCSERVE_FORCE_RETRAIN=1 retrains anyway; MCSERVE_TRAIN_ARGS adds CLI flags
# (e.g. "--epochs 1 --mc-samples 10 --no-plots"); arguments given to the container are appended.
set -eu
out=${MCSERVE_MODEL_DIR:-/models/current}
case "${MCSERVE_FORCE_RETRAIN:-0}" in
  1|true|yes) skip="" ; echo "train-job: MCSERVE_FORCE_RETRAIN set: retraining into $out" ;;
  *) skip="--skip-if-valid" ;;
esac
# shellcheck disable=SC2086
exec python -m training --out "$out" $skip ${MCSERVE_TRAIN_ARGS:-} "$@"
