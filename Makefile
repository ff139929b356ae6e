# Shortcuts; the README's commands work without make.
.PHONY: demo test notebooks
demo:
	python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/kagglekit run classification --out runs/quickstart --budget 5m
test:
	python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest
notebooks:  # regenerate the .ipynb files from their py:percent twins
	cd notebooks && for f in *.py; do ../.venv/bin/jupytext --to ipynb "$$f"; done
