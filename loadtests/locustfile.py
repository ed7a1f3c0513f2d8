"""The locustfile `tandem loadtest` runs (`locust -f <this file> --headless ...`); it can
also be run by hand with locust's own flags plus the --tandem-* flags below, e.g.

    locust -f loadtests/locustfile.py --headless -u 4 -r 4 -H 127.0.0.1:50051 \\
        --tandem-requests 20 --tandem-records /tmp/records.jsonl RouterUser

Each finished request is appended to --tandem-records as one JSON line (a RequestRecord),
which `tandem.loadtests.report.summarize` turns into the summary JSON.
"""

from __future__ import annotations

import json
from typing import IO, Any

from locust import events

from tandem.loadtests.openai_user import OpenAIUser  # noqa: F401 (locust finds users here)
from tandem.loadtests.users import CloudUser, RouterChatUser, RouterUser  # noqa: F401
from tandem.loadtests.workload import Workload


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("tandem")
    group.add_argument("--tandem-target", default="router", choices=("router", "cloud", "openai"))
    group.add_argument("--tandem-prompts", default="mixed",
                       help="Built-in prompt set name or JSONL file.")
    group.add_argument("--tandem-chats", default="",
                       help="Built-in name or JSONL file with chats for RouterChatUser.")
    group.add_argument("--tandem-mix", default="", help="Tag weights, e.g. easy=3,hard=1.")
    group.add_argument("--tandem-policy", default="",
                       help="Router policy or weights, e.g. edge=1,speculative=1.")
    group.add_argument("--tandem-chat-policy", default="", help="Policy weights of chat users.")
    group.add_argument("--tandem-chat-users", type=int, default=0,
                       help="How many of the users are RouterChatUser (locust fixed_count).")
    group.add_argument("--tandem-max-tokens", type=int, default=64)
    group.add_argument("--tandem-temperature", type=float, default=None)
    group.add_argument("--tandem-timeout", type=float, default=300.0,
                       help="Deadline of each request in seconds.")
    group.add_argument("--tandem-seed", type=int, default=0)
    group.add_argument("--tandem-requests", type=int, default=0,
                       help="Stop after this many requests in all (0: run for --run-time).")
    group.add_argument("--tandem-request-rate", type=float, default=0.0,
                       help="Poisson arrivals at this many requests/s in all (0: constant "
                            "concurrency, each user sends again as soon as answered).")
    group.add_argument("--tandem-records", default="", help="JSONL file for request records.")


class _RecordWriter:
    def __init__(self, path: str) -> None:
        self.file: IO[str] | None = open(path, "a") if path else None

    def on_request(self, context: dict[str, Any] | None = None, **_: Any) -> None:
        record = (context or {}).get("tandem_record")
        if record is not None and self.file is not None:
            self.file.write(json.dumps(record.to_json()) + "\n")
            self.file.flush()  # a killed run keeps what finished

    def close(self, **_: Any) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    import grpc.experimental.gevent

    grpc.experimental.gevent.init_gevent()  # before any channel exists
    options = environment.parsed_options
    environment.tandem_workload = Workload.from_options(options)
    RouterChatUser.fixed_count = options.tandem_chat_users  # type: ignore[misc]
    writer = _RecordWriter(options.tandem_records)
    environment.events.request.add_listener(writer.on_request)
    environment.events.quitting.add_listener(writer.close)
