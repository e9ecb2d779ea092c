# The two commands: `make demo` (the whole lifecycle through Airflow) and `make test`.
# Both set themselves up (Java, .venv with the pinned lock) on first use.
PY := .venv/bin/python
export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins

.PHONY: demo test ui serve down status bench bench-large bench-serving bench-overhead zoo venv clean stack-up stack-down stack-status stack-demo compose-env

demo: venv
	$(PY) -m scripts.demo

test: venv
	$(PY) -m pytest

ui: venv  ## start Airflow, MLflow and the scoring service on the demo's state, for exploring
	$(PY) -m scripts.stack serve

serve: venv  ## the scoring service of every use case's @champion (with the stack it needs)
	$(PY) -m scripts.stack serve

down: venv  ## stop everything `make ui` or `make demo` started
	$(PY) -m scripts.stack down

status: venv
	$(PY) -m scripts.stack status

# The production topology natively (PostgreSQL, MLflow server, Spark standalone, Airflow on
# PostgreSQL), state under .stack/. Same code; only MLOPS_TOPOLOGY differs.
stack-up: venv
	MLOPS_TOPOLOGY=cluster $(PY) -m scripts.stack up

stack-down: venv
	MLOPS_TOPOLOGY=cluster $(PY) -m scripts.stack down

stack-status: venv
	MLOPS_TOPOLOGY=cluster $(PY) -m scripts.stack status

stack-demo: venv  ## the demo's story on the native production topology
	MLOPS_TOPOLOGY=cluster $(PY) -m scripts.demo

compose-env: venv  ## .env with fresh secrets for docker-compose.yaml
	$(PY) -m scripts.compose_env

bench: venv  ## every stage against its peer at the small sizes (under 15 minutes); rows in docs/benchmarks.md
	$(PY) -m bench.suite --size small

bench-large: venv  ## the same at the 10M sizes, and the scale curve to 50M rows (local[2] and standalone)
	$(PY) -m bench.suite --size large

zoo: venv  ## 37 real tables through the user's path (init .. monitor) against plain scikit-learn; rows in docs/benchmarks.md
	$(PY) -m bench.zoo

bench-serving: venv  ## the scoring service under Locust load against `mlflow models serve`
	$(PY) -m bench.bench_serving

bench-overhead: venv  ## per-task overhead, stock LocalExecutor vs preloading (after `make demo`)
	$(PY) -m bench.bench_task_overhead

venv:
	@bash scripts/bootstrap.sh

clean: down
	rm -rf .state
