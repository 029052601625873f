# The two commands of the README: `make demo` and `make test`.
# Both first run scripts/setup.sh, which installs what is missing into the
# environment of $(PYTHON) and is quick when nothing is.

PYTHON ?= python3

BUNDLED_CKPT   := checkpoints/nitrogen-emoji32.safetensors
UNTRAINED_CKPT := outputs/untrained-emoji32.safetensors
DEMO_LABEL     ?= smiley

.PHONY: demo test setup setup-test

setup:
	@PYTHON="$(PYTHON)" bash scripts/setup.sh

setup-test:
	@PYTHON="$(PYTHON)" bash scripts/setup.sh --test

# Exit code 5 (no tests collected) is a failure too: make stops on any non-zero.
test: setup-test
	$(PYTHON) -m pytest -q -p no:cacheprovider

demo: setup
	@mkdir -p outputs
	@set -e; \
	if [ -f "$(BUNDLED_CKPT)" ]; then \
		ckpt="$(BUNDLED_CKPT)"; note=""; \
	else \
		note="NOTE: no trained checkpoint is bundled yet ($(BUNDLED_CKPT)); the demo runs an UNTRAINED model, so the images are noise-like."; \
		echo "$$note"; \
		rm -f "$(UNTRAINED_CKPT)"; \
		echo "$(PYTHON) -m nitrogen_core init --preset emoji32 --out $(UNTRAINED_CKPT)"; \
		$(PYTHON) -m nitrogen_core init --preset emoji32 --out "$(UNTRAINED_CKPT)"; \
		ckpt="$(UNTRAINED_CKPT)"; \
	fi; \
	echo "$(PYTHON) -m nitrogen_core generate --ckpt $$ckpt --label $(DEMO_LABEL) --batch 4 --seed 1 --out outputs/demo.png --heatmap outputs/demo_heatmap.png"; \
	$(PYTHON) -m nitrogen_core generate --ckpt "$$ckpt" --label $(DEMO_LABEL) --batch 4 --seed 1 --out outputs/demo.png --heatmap outputs/demo_heatmap.png; \
	if [ -n "$$note" ]; then echo "$$note"; fi
