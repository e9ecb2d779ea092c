"""The control room: a FastAPI app inside Airflow's api-server (see app.py)."""

PREFIX = "/control-room"   # where the api-server mounts it (plugins/control_room.py)
