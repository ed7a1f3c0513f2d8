"""`tandem`: the one console command. Subcommands import their parts lazily so that
`tandem ask` does not pay for loading torch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tandem.shared.config import add_config_flags, config_from_args

# component -> (config class path, server main path)
SERVICES = {
    "cloud": ("tandem.cloud.config:CloudConfig", "tandem.cloud.server:main"),
    "edge": ("tandem.edge.config:EdgeConfig", "tandem.edge.server:main"),
    "router": ("tandem.router.config:RouterConfig", "tandem.router.server:main"),
}

# Modules of tandem.shared.cli that each add one subcommand with `add_parser(sub)`.
COMMAND_MODULES = ("up", "ask", "bench", "evaluate", "loadtest", "compress", "distill", "health",
                   "chaos")


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(__import__(module, fromlist=[attr]), attr)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="Run one service in the foreground.")
    components = serve.add_subparsers(dest="component", required=True)
    for name, (config_path, main_path) in SERVICES.items():
        p = components.add_parser(name, help=f"Run the {name} service.")
        p.add_argument("--config", help="TOML file with a [%s] section." % name)
        cls = _load(config_path)
        add_config_flags(p, cls)
        p.set_defaults(run=_serve_runner(name, cls, main_path))


def _serve_runner(name: str, cls: type, main_path: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from tandem.shared.errors import Unavailable
        from tandem.shared.models import ModelNotFound

        try:
            config = config_from_args(cls, name, args)
        except ValueError as exc:
            print(f"tandem serve {name}: invalid configuration: {exc}", file=sys.stderr)
            return 2
        if name in ("cloud", "edge"):  # both compute with OpenMP threads (torch, llama.cpp)
            from tandem.shared.openmp import set_openmp_wait
            from tandem.shared.priority import set_compute_nice

            set_openmp_wait(config.openmp_spin_count)
            set_compute_nice(config.compute_nice)
        try:
            _load(main_path)(config)
        except (ModelNotFound, Unavailable) as exc:  # no model, or no vLLM for --engine vllm
            print(f"tandem serve {name}: {exc}", file=sys.stderr)
            return 2
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    for name in COMMAND_MODULES:
        _load(f"tandem.shared.cli.{name}:add_parser")(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
