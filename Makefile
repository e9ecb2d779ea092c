# The two commands: `make demo` (the whole lifecycle through Airflow) and `make test`.
# Both set themselves up (Java, .venv with the pinned lock) on first use.
PY := .venv/bin/python
export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins

.PHONY: demo test ui down status bench venv clean

demo: venv
	$(PY) -m scripts.demo

test: venv
	$(PY) -m pytest

ui: venv  ## start Airflow and MLflow on the demo's state, for exploring
	$(PY) -m scripts.stack up

down: venv  ## stop everything `make ui` or `make demo` started
	$(PY) -m scripts.stack down

status: venv
	$(PY) -m scripts.stack status

bench: venv
	$(PY) -m bench.bench_scoring

venv:
	@bash scripts/bootstrap.sh

clean: down
	rm -rf .state
