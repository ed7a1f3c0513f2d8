import gc

from tandem.shared.memory import freeze_startup_objects


def _collectable(obj: object) -> bool:
    """Whether the collector's generations (what a full collection walks) hold ``obj``."""
    return any(o is obj for o in gc.get_objects())


def test_startup_objects_leave_the_collectors_reach_and_later_ones_do_not():
    startup = [[i] for i in range(10)]  # a model's lists, a tokenizer's tables...
    assert _collectable(startup)
    try:
        freeze_startup_objects()
        assert not _collectable(startup) and gc.get_freeze_count() > len(startup)
        later = [[] for _ in range(10)]  # what serving allocates
        assert _collectable(later)
    finally:
        gc.unfreeze()  # the rest of the test session keeps its usual collector
    assert _collectable(startup)
