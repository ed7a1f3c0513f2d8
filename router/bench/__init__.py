"""The router's benchmarks (`tandem bench policies|speculative|router|ceiling`): each
module has HELP, add_arguments(parser), run(args) -> report and table(report)."""
