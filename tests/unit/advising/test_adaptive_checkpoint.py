"""The adaptive offset's checkpoint: for its version only, whole or not at all, never followed."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

from scalable.advising.adaptive import AdaptiveOffset
from scalable.advising.adaptive_checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint


def _advisor(offset=0.12, observed=300, missed=12, until=1.8e9):
    return SimpleNamespace(adaptive_=AdaptiveOffset(0.05, offset=offset, observed=observed, missed=missed),
                           observed_until_=until)


def test_round_trip_for_its_version_only(tmp_path):
    assert save_checkpoint(tmp_path, "default", "3", _advisor())
    offset, until = load_checkpoint(tmp_path, "default", "3")
    assert offset == AdaptiveOffset(0.05, offset=0.12, observed=300, missed=12) and until == 1.8e9
    assert load_checkpoint(tmp_path, "default", "4") is None, "a newer version starts from its own state"
    assert not [p for p in (tmp_path / "default").iterdir() if p.name != CHECKPOINT_FILE], "no staging file left"


def test_nothing_to_keep_writes_nothing(tmp_path):
    assert not save_checkpoint(tmp_path, "default", "1", SimpleNamespace(adaptive_=None, observed_until_=1.0))
    assert not save_checkpoint(tmp_path, "default", "1", _advisor(until=-math.inf))
    assert not (tmp_path / "default" / CHECKPOINT_FILE).exists()


def test_a_corrupt_or_hostile_checkpoint_is_ignored(tmp_path):
    path = tmp_path / "default" / CHECKPOINT_FILE
    path.parent.mkdir()
    for text in ("{", "[]", '{"version": "1"}', '{"version": "1", "adaptive": {"target": 0.05, "eta": 0.05, '
                 '"offset": NaN, "observed": 1, "missed": 0}, "observed_until": 1}',
                 '{"version": "1", "adaptive": {"target": 0.05, "eta": 0.05, "offset": 0.1, "observed": 1, '
                 '"missed": 5}, "observed_until": 1}', " " * (70 * 1024)):
        path.write_text(text)
        assert load_checkpoint(tmp_path, "default", "1") is None, text[:60]


def test_a_symlinked_checkpoint_is_not_followed(tmp_path):
    elsewhere = tmp_path / "other"
    save_checkpoint(elsewhere, "default", "1", _advisor())
    (tmp_path / "default").mkdir()
    os.symlink(elsewhere / "default" / CHECKPOINT_FILE, tmp_path / "default" / CHECKPOINT_FILE)
    assert load_checkpoint(tmp_path, "default", "1") is None
