SHELL := /bin/bash
DATA ?=

.PHONY: run test lint setup

# First command: set up and run (see README).
run:
	bash scripts/run.sh $(DATA)

# Second command: set up and run the tests.
test:
	bash scripts/test.sh

lint: setup
	bash scripts/lint.sh

setup:
	bash scripts/setup.sh
