"""Natural order of version strings, and where a trigger without a version goes."""

from __future__ import annotations

import random

from engine.versions import default_version, highest, live_versions, version_key


def test_dotted_numbers_compare_as_numbers() -> None:
    ordered = ["1", "1.2", "1.9", "1.10", "1.10.1", "2", "10", "10.0.1"]
    shuffled = random.Random(6).sample(ordered, len(ordered))
    assert sorted(shuffled, key=version_key) == ordered
    assert highest(["1.9", "1.10"]) == "1.10"
    assert highest(["2", "1.10"]) == "2"


def test_text_parts_compare_as_text_after_numbers() -> None:
    assert sorted(["v10", "v2", "v1"], key=version_key) == ["v1", "v2", "v10"]
    assert version_key("1.0") < version_key("1.0a") < version_key("1.0b")
    assert version_key("1.0-beta") < version_key("1.0.0")
    assert version_key("2") < version_key("beta")
    # One number, two spellings: a stable, total order all the same.
    assert version_key("1") != version_key("01")
    assert highest([]) is None


def test_default_version_prefers_what_live_workers_serve() -> None:
    workers = [
        {"worker_id": "a", "jobs": ["j@1.9", "other@7"]},
        {"worker_id": "b", "jobs": ["j@1.9"]},
        {"worker_id": "c", "jobs": ["jj@5"]},
    ]
    served = live_versions("j", workers)
    assert served == {"1.9": ["a", "b"]}
    assert default_version(["1.9", "1.10"], served) == "1.9"
    assert default_version(["1.9", "1.10"], {}) == "1.10"
    # A live worker's version that is not registered (yet) is not a target.
    assert default_version(["1"], {"2": ["a"]}) == "1"
