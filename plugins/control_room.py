"""The control room in Airflow's UI: the FastAPI app of ``mlops_airflow.control_room`` mounted on
the api-server at ``/control-room`` (behind Airflow's login), and a navigation entry that shows it
inside the UI. Airflow loads this file from the plugins folder in every process that loads
plugins (scheduler, workers, each task's process); the app itself, FastAPI and its templates are
imported on the first request to the api-server only. ``.airflowignore`` keeps Airflow from
loading the ``mlops_airflow`` package's modules as plugins of their own."""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mlops_airflow.control_room import PREFIX


class ControlRoomApp:
    """An ASGI app that builds the control room's FastAPI app on its first request."""

    app = None

    async def __call__(self, scope, receive, send) -> None:
        if ControlRoomApp.app is None:
            from mlops_airflow.control_room.app import app

            ControlRoomApp.app = app
        await ControlRoomApp.app(scope, receive, send)


class ControlRoomPlugin(AirflowPlugin):
    name = "mlops_control_room"
    fastapi_apps = [{"app": ControlRoomApp(), "url_prefix": PREFIX, "name": "MLOps control room"}]
    external_views = [{"name": "Control room", "href": f"{PREFIX}/", "url_route": "control-room",
                       "destination": "nav", "category": "browse"}]
