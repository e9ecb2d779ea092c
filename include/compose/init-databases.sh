#!/usr/bin/env bash
# Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d):
# one role and one database for Airflow, one for MLflow, passwords from the .env file.
set -euo pipefail
for pair in "airflow:${AIRFLOW_DB_PASSWORD:?}" "mlflow:${MLFLOW_DB_PASSWORD:?}"; do
  name=${pair%%:*}
  password=${pair#*:}
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -v name="$name" -v password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
SQL
done
