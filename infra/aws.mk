# AWS targets, included from the Makefile.
#
#   make build-lambda            release arm64 zips of the four functions (cargo-lambda)
#   make invoke FN=poll EVENT=events/poll.json
#                                run one function locally on a sample event (cargo-lambda)
#   make lint-template           cfn-lint on template.yaml
#   make test-aws                behavioural suites and the Lambda end-to-end run on moto

IMAGEGEN_VENV ?= $(CURDIR)/.venv
export IMAGEGEN_VENV
CARGO_LAMBDA ?= $(IMAGEGEN_VENV)/bin/cargo-lambda
LAMBDA_FUNCTIONS := submit poll generate webhook

.PHONY: venv build-lambda invoke lint-template test-aws

venv:
	@infra/venv.sh >/dev/null

$(CARGO_LAMBDA):
	@infra/venv.sh >/dev/null
	$(IMAGEGEN_VENV)/bin/pip install --quiet --disable-pip-version-check cargo-lambda ziglang

build-lambda: $(CARGO_LAMBDA)
	$(CARGO_LAMBDA) lambda build --release --arm64 --output-format zip \
		$(foreach fn,$(LAMBDA_FUNCTIONS),-p imagegen-$(fn))
	@for fn in $(LAMBDA_FUNCTIONS); do \
		printf '%-10s %s bytes\n' $$fn "$$(stat -c %s target/lambda/$$fn/bootstrap.zip)"; \
	done

# Starts the function under cargo-lambda's local runtime, sends the event, then stops it.
# The function reads its settings from the environment (see docs/aws.md), so point them and
# AWS_ENDPOINT_URL at real resources or an emulator first.
invoke: $(CARGO_LAMBDA)
	@test -n "$(FN)" -a -n "$(EVENT)" || { echo "usage: make invoke FN=poll EVENT=events/poll.json"; exit 2; }
	@$(CARGO_LAMBDA) lambda watch --invoke-port 9001 -p imagegen-$(FN) & \
		watcher=$$!; trap 'kill $$watcher 2>/dev/null' EXIT; sleep 5; \
		$(CARGO_LAMBDA) lambda invoke --invoke-port 9001 --data-file $(EVENT) $(FN)

lint-template: venv
	$(IMAGEGEN_VENV)/bin/cfn-lint template.yaml

test-aws: venv
	cargo test -p imagegen-aws-tests
