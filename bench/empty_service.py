"""The floor of the online benchmark: a FastAPI app under uvicorn that answers the same requests
as the scoring service (``POST /v1/{use_case}/predict``) with a fixed score and does nothing else.
Loaded by the same Locust users on the same cores in the same run, its p50 and p99 are what the
measurement itself costs (HTTP, the event loop, the load generator sharing the machine); what our
service adds is the difference.

    uvicorn bench.empty_service:app --port 8000 --no-access-log
"""
from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()
ANSWER = {"predictions": [{"score": 0.5, "label": 0}], "model_version": "0"}


@app.get("/readyz")
def ready() -> dict:
    return {"status": "ready"}


@app.post("/v1/{use_case}/predict")
async def predict(use_case: str, body: dict) -> dict:   # the body parsed, as the service parses it
    return ANSWER
