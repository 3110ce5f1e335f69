# Two commands (see README): `make demo` and `make test`.
.PHONY: setup demo test test-all

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/sns-demo

test: setup
	.venv/bin/python -m pytest

test-all: setup
	.venv/bin/python -m pytest -m ""
