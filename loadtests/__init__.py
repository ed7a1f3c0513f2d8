"""Load tests (locust users for the Router and Cloud services) live here.

Nothing is implemented yet: the locust users, workloads and reports are tracked as
their own issue. `tandem bench policies` measures single-stream speeds meanwhile.
"""
