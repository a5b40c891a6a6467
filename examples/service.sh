#!/bin/sh
# deepfeat's HTTP API with curl, step by step. The README's "Service" section shows these lines,
# and test/api-pipeline.e2e.test.ts runs this file against a real `deepfeat serve` and workers.
#
#   DEEPFEAT_API=http://127.0.0.1:8080 DEEPFEAT_TOKEN=<an admin token> \
#   SOURCE=s3://my-bucket/pets/ IMAGE=photo.png sh examples/service.sh
set -eu
API=${DEEPFEAT_API:-http://127.0.0.1:8080}
AUTH="Authorization: Bearer $DEEPFEAT_TOKEN"

# Liveness (the process answers) and readiness (Redis and the bucket answer); no token needed.
curl -fsS "$API/healthz"; echo
curl -fsS "$API/readyz"; echo

# Queue a training run: the body is `deepfeat run`'s request (only "source" is required; the
# other fields default as the CLI's flags do). Needs an admin token. Answers 202 {"runId": ...}.
RUN=$(curl -fsS -X POST "$API/v1/runs" -H "$AUTH" -H 'Content-Type: application/json' \
  -d "{\"source\": \"$SOURCE\", \"name\": \"pets\", \"features\": {\"kind\": \"raw-pixels\", \"size\": 32}}" |
  sed -n 's/.*"runId":"\([^"]*\)".*/\1/p')
echo "run $RUN"

# Follow it: server-sent events ("status" on each change, then "end" with the final status).
curl -fsSN -H "$AUTH" "$API/v1/runs/$RUN/events"

# Its status (the same JSON as `deepfeat status RUN --json`), and the recent runs.
curl -fsS -H "$AUTH" "$API/v1/runs/$RUN"; echo
curl -fsS -H "$AUTH" "$API/v1/runs?limit=5"; echo

# Published models, a model's versions, and a version's files (model.json, classifier.onnx).
curl -fsS -H "$AUTH" "$API/v1/models"; echo
curl -fsS -H "$AUTH" "$API/v1/models/pets"; echo
curl -fsS -H "$AUTH" -o model.json "$API/v1/models/pets/latest/files/model.json"
curl -fsS -H "$AUTH" -o classifier.onnx "$API/v1/models/pets/$RUN/files/classifier.onnx"

# Classify an image (multipart upload; several -F image=@… at once; top: labels per image).
curl -fsS -H "$AUTH" -F "image=@$IMAGE" -F top=2 "$API/v1/models/pets/predict"; echo

# The OpenAPI document, and Prometheus metrics.
curl -fsS -H "$AUTH" -o openapi.json "$API/v1/openapi.json"
curl -fsS -H "$AUTH" "$API/metrics" | grep '^bullmq_job_count{queue="extract"'
