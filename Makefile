# Two entry points for a fresh machine:
#   make demo   install, then benchmark sequential vs CHORDS (4, 6, 8 cores) on the embedded digits model
#   make test   install, then run the tests (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REPORT ?= report

.PHONY: demo test install clean

$(BIN)/hasten: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[bench,test]"
	touch $@

install: $(BIN)/hasten

demo: install
	$(BIN)/hasten bench --model digits --methods sequential,chords --cores 4,6,8 --steps 50 --init paper,uniform --out $(REPORT)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(REPORT) build src/*.egg-info
