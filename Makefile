.PHONY: help install lint test demo generate docs
help:            ## list targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'
install:         ## install popsync with the dev tools
	pip install -e '.[dev]'
lint:            ## ruff, formatting, mypy --strict, contract models and generated docs up to date
	ruff check . && ruff format --check . && mypy && popsync contract generate --check && python -m popsync.dev.docs --check
test:            ## unit and integration tests (real broker and PostgreSQL)
	pytest
demo:            ## the whole pipeline on embedded services
	popsync demo
generate:        ## regenerate pydantic models from schemas/avro
	python -m popsync.contract.codegen
docs:            ## regenerate docs/configuration.md and the topology blocks of README.md, docs/architecture.md
	python -m popsync.dev.docs
.PHONY: bench bench-backfill bench-matching bench-pipeline bench-refold bench-trust bench-verify
bench: bench-backfill bench-matching bench-pipeline bench-refold bench-trust bench-verify  ## run every benchmark; figures in bench/results/ (see bench/README.md)
bench-matching:  ## record matching: precision, recall, review band -> bench/results/matching.json
	python -m bench.matching
bench-refold:  ## 6,000 reversed events of one citizen, and a bystander's latency -> bench/results/refold.json
	python -m bench.refold
bench-trust:  ## the validator's signature check, CPU per event -> bench/results/trust.json
	python -m bench.trust
bench-verify:  ## the verification service on 1,000,000 citizens: floor, baseline, service (~6 min) -> bench/results/verify.json
	python -m bench.verify
bench-pipeline:  ## floor, naive and popsync on 1,000,000 events (~30 min) -> bench/results/pipeline.json, .png
	popsync bench
bench-backfill:  ## floor and popsync backfill on 10,000,000 archived events (~31 min at the rate of 2026-12-07; the archive is made once, ~6 min) -> bench/results/backfill.json
	python -m bench.backfill
