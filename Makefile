SHELL := /bin/bash
DATA ?=

.PHONY: run test lint setup demo

# First command: set up and run the platform (API + worker + broker + SQLite; see README).
run:
	bash scripts/run.sh

# The engine alone: a small train + eval with the CLI on DATA (default: raccoon or the sample).
demo:
	bash scripts/demo.sh $(DATA)

# Second command: set up and run the tests.
test:
	bash scripts/test.sh

lint: setup
	bash scripts/lint.sh

setup:
	bash scripts/setup.sh
