# The project's image: Airflow 3.3 extended with the project's pinned lock, a Java runtime
# for Spark, and the project's code. docker-compose.yaml runs every service from it (Airflow,
# the MLflow server, the Spark master, worker and Connect server), so the Python that runs a
# task, a Spark executor's UDF and the MLflow server is one and the same.
FROM apache/airflow:3.3.2-python3.11

USER root
# Spark 4 runs on Java 17 or 21: Debian's default runtime is one of them
RUN apt-get update \
 && apt-get install -y --no-install-recommends default-jre-headless \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/mlops/lake /opt/mlops/reports /opt/mlops/mlflow-artifacts \
 && chown -R airflow:0 /opt/mlops

USER airflow
COPY --chown=airflow:0 requirements.txt /opt/airflow/project/requirements.txt
RUN pip install --no-cache-dir -r /opt/airflow/project/requirements.txt \
 && ln -s "$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" /opt/airflow/spark
COPY --chown=airflow:0 . /opt/airflow/project
# .git stays out of the image; the commit it was built from is recorded on every run and model card
# (docker compose build --build-arg CODE_VERSION=$(git rev-parse HEAD))
ARG CODE_VERSION=unknown

ENV SPARK_HOME=/opt/airflow/spark \
    MLOPS_CODE_VERSION=${CODE_VERSION} \
    PYTHONPATH=/opt/airflow/project:/opt/airflow/project/plugins
WORKDIR /opt/airflow/project
