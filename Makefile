# The README's commands. `make run` walks the lifecycle (`make quick` in 3 minutes); `make test` runs the suite.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed

.PHONY: run quick test bench lint mutate clean

$(STAMP): pyproject.toml constraints.txt
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "warning: Debian's chromium did not install; the report's browser test needs it"
	command -v g++ >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq g++ >/dev/null; } \
		|| echo "warning: g++ did not install; llmlab's int8 kernel will fall back to PyTorch's"
	test -d .venv || python3 -m venv .venv
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	@echo "make run: the built-in lifecycle recipe (about 7.5 minutes on 2 CPU cores, 10 at most; a rerun skips finished stages)."
	@echo "For a first look in about 2.3 minutes: make quick (the same stages with smaller budgets)."
	.venv/bin/llmlab lifecycle default --out runs/lifecycle

quick: $(STAMP)
	.venv/bin/llmlab lifecycle quick --out runs/quick

# two workers, one PyTorch thread each (tests/conftest.py): the suite in about 5 minutes on 2 cores, not 9
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) bench/decode_speed.py
	$(PY) bench/train_throughput.py
	$(PY) bench/shakespeare_char.py
	$(PY) bench/quantization.py
	$(PY) bench/families.py
	$(PY) bench/in_context.py
	$(PY) bench/distributed.py
	$(PY) bench/trainer_overhead.py
	$(PY) bench/lora_vs_peft.py
	$(PY) bench/decode_vs_llamacpp.py
	$(PY) bench/retrieval.py
	$(PY) bench/structured_output.py
	$(PY) bench/speculative.py
	$(PY) bench/export_parity.py
	$(PY) bench/rag_helps.py
	$(PY) bench/lifecycle_recipes.py

# Mutation testing (not part of `make test`): `make mutate` runs every group, `make mutate GROUPS="prompts lora"`
# some; the score table in docs/mutation.md is rewritten from each group's last run.
GROUPS ?= --all
mutate: $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,mutate]'
	$(PY) bench/mutate.py $(GROUPS) --table docs/mutation.md

lint: $(STAMP)
	.venv/bin/ruff check src tests bench

clean:
	rm -rf .venv runs
