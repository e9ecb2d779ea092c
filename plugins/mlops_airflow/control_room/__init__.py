"""The control room: a FastAPI app inside Airflow's api-server (see app.py)."""
