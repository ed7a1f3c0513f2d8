# The two quick-start commands, plus code generation.
.PHONY: demo test proto

DEMO_PROMPT ?= Explain what a CPU does in one sentence.

demo:  ## install, bring the local stack up, answer a demo prompt, shut down
	scripts/install.sh
	.venv/bin/tandem up --ask "$(DEMO_PROMPT)"

test:  ## install with the dev tools and vLLM's CPU build, run the whole test suite
	scripts/install.sh --dev
	scripts/install-vllm.sh
	scripts/test.sh

proto:  ## regenerate proto/gen from proto/tandem/v1
	scripts/gen_proto.sh
