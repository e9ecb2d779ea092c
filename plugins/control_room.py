"""The control room in Airflow's UI: the FastAPI app of ``mlops_airflow.control_room`` mounted on
the api-server at ``/control-room`` (behind Airflow's login), and a navigation entry that shows it
inside the UI. Airflow loads this file from the plugins folder; ``.airflowignore`` keeps it from
loading the ``mlops_airflow`` package's modules as plugins of their own."""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mlops_airflow.control_room.app import PREFIX, app


class ControlRoomPlugin(AirflowPlugin):
    name = "mlops_control_room"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "MLOps control room"}]
    external_views = [{"name": "Control room", "href": f"{PREFIX}/", "url_route": "control-room",
                       "destination": "nav", "category": "browse"}]
