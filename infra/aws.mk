# AWS targets, included from the Makefile.
#
#   make build-lambda            release arm64 zips of the five functions (cargo-lambda)
#   make invoke FN=poll EVENT=events/poll.json
#                                run one function locally on a sample event (cargo-lambda)
#   make lint-template           cfn-lint on template.yaml
#   make test-aws                behavioural suites and the Lambda end-to-end run on moto

IMAGEGEN_VENV ?= $(CURDIR)/.venv
export IMAGEGEN_VENV
CARGO_LAMBDA ?= $(IMAGEGEN_VENV)/bin/cargo-lambda
LAMBDA_FUNCTIONS := submit poll generate webhook reconcile

.PHONY: venv build-lambda invoke lint-template test-aws

venv:
	@infra/venv.sh >/dev/null

$(CARGO_LAMBDA):
	@infra/venv.sh >/dev/null
	$(IMAGEGEN_VENV)/bin/pip install --quiet --disable-pip-version-check cargo-lambda ziglang

# cargo-lambda finds zig through the venv's python (`python3 -m ziglang`).
build-lambda: $(CARGO_LAMBDA)
	PATH="$(IMAGEGEN_VENV)/bin:$$PATH" $(CARGO_LAMBDA) lambda build --release --arm64 --output-format zip \
		$(foreach fn,$(LAMBDA_FUNCTIONS),-p imagegen-$(fn))
	@for fn in $(LAMBDA_FUNCTIONS); do \
		printf '%-10s %s bytes\n' $$fn "$$(stat -c %s $${CARGO_TARGET_DIR:-target}/lambda/$$fn/bootstrap.zip)"; \
	done

# Runs the function under cargo-lambda's local runtime and sends it the event; see
# infra/invoke.sh for the settings it needs.
invoke: $(CARGO_LAMBDA)
	@test -n "$(FN)" -a -n "$(EVENT)" || { echo "usage: make invoke FN=poll EVENT=events/poll.json"; exit 2; }
	infra/invoke.sh $(FN) $(EVENT) $(CARGO_LAMBDA)

lint-template: venv
	$(IMAGEGEN_VENV)/bin/cfn-lint template.yaml

test-aws: venv
	cargo test -p imagegen-aws-tests
