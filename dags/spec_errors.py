"""Broken use-case specs, shown where Airflow users look: this file's import error.

The lifecycle DAG files leave a broken spec's use case out (the other use cases keep running);
importing this file fails while any spec under the include folder is broken, and its import
error in the Airflow UI lists every problem as ``<file>: <key>: <message>``. It defines no DAG.
"""
from __future__ import annotations

from mlops_airflow.common import spec_errors

_broken = spec_errors()
if _broken:
    raise ImportError("use-case spec problems (fix them, or run `mlops check <use case>`):\n"
                      + "\n".join(str(error) for error in _broken))
