"""Loading a bundle: a broken one is refused at load with a ``BundleError`` naming the file and the field, never
later, when a detector builds its template index or judge from it; a good one loads as it always did."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from logbert_core.bundle import META, BundleError, Thresholds, load_bundle
from logbert_core.calibration import DISTANCE, KEY_MISSES

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "hdfs"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    out = tmp_path / "hdfs"
    shutil.copytree(SHIPPED, out)
    return out


def edit(bundle_dir: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Change the bundle's JSON in place with ``change``."""
    path = bundle_dir / META
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_the_shipped_bundle_loads_with_its_version_and_looks_up_templates():
    bundle = load_bundle(SHIPPED)
    assert bundle.version == json.loads((SHIPPED / META).read_text())["version"]
    found = bundle.template_index().lookup("Receiving block blk_123 src: /10.0.0.1:5000 dest: /10.0.0.2:50010")
    assert found.template_id is not None and found.exact


def first_cluster(meta: dict[str, Any]) -> list[Any]:
    return meta["drain"]["state"]["clusters"][0]


@pytest.mark.parametrize("change,field", [
    (lambda m: m["drain"].update(state={"garbage": 1}), "drain.state"),
    (lambda m: m["drain"].update(state=[1]), "drain.state"),
    (lambda m: first_cluster(m)[1].append("extra"), "drain.state"),  # filed under the wrong token count
    (lambda m: first_cluster(m).__setitem__(1, [1, 2]), "drain.state"),  # tokens that are not strings
    (lambda m: m["drain"]["state"]["tree"]["kids"].update({"0": {"ids": [], "kids": {}}}), "drain.state"),
    (lambda m: m["drain"]["params"].update(masking=[["(", "X"]]), "drain.params"),
    (lambda m: m["drain"]["params"].update(masking=[["a", "\\9"]]), "drain.params"),  # bad replacement
    (lambda m: m["drain"]["params"].update(extra_delimiters=[1]), "drain.params"),
    (lambda m: m["drain"]["params"].update(max_clusters="many"), "drain.params"),
    (lambda m: m.update(rest={"garbage": 1}), "rest"),
    (lambda m: m.update(rest=[1]), "rest"),
    (lambda m: m["rest"].update(states=["4:1|1|2"]), "rest"),  # rested more often than reached
    (lambda m: m.update(settings=[1]), "settings"),
    (lambda m: m.update(version=7), "version"),
    (lambda m: m.update(metrics="fine"), "metrics"),
    (lambda m: m.update(thresholds=["a"]), "thresholds"),
    (lambda m: m["thresholds"].update(by_length=[1.0]), "thresholds"),
    (lambda m: m["thresholds"].update(by_length={"hypersphere_distance": [1.0]}), "thresholds"),
    (lambda m: m["thresholds"].update(by_length={"hypersphere_distance": {"one": 1.0}}), "thresholds"),
    (lambda m: m.pop("vocab"), "vocab"),
])
def test_a_broken_field_is_refused_naming_the_file_and_the_field(copy, change, field):
    edit(copy, change)
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    assert f"{copy / META}: bad {field} (" in str(err.value)


@pytest.mark.parametrize("doc", [[1], [], None, "x", 3])
def test_a_bundle_json_that_is_not_an_object_is_refused(copy, doc):
    (copy / META).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="expected a JSON object") as err:
        load_bundle(copy)
    assert str(copy / META) in str(err.value)


def test_a_bundle_json_that_is_not_utf8_is_refused(copy):
    (copy / META).write_bytes(b'{"version": "\xff\xfe"}')
    with pytest.raises(BundleError, match="unreadable") as err:
        load_bundle(copy)
    assert str(copy / META) in str(err.value)


def test_thresholds_by_window_length_round_trip_and_an_older_bundle_judges_every_length():
    th = Thresholds(0.2, 5.0, "test", by_length={DISTANCE: {0: 5.0, 2: 7.5}})
    back = Thresholds.from_json(json.loads(json.dumps(th.to_json())))
    assert back == th
    assert back.model(DISTANCE, 1) == 5.0 and back.model(DISTANCE, 5) == 7.5  # 1 entry: class 0; 4-7: class 2
    assert math.isinf(back.model(DISTANCE, 2)) and math.isinf(back.model(DISTANCE, 64))  # never calibrated
    assert back.model(KEY_MISSES, 64) == 0.2  # a rule without a table judges every length by its threshold
    old = th.to_json()
    old.pop("by_length")
    assert Thresholds.from_json(old).model(DISTANCE, 64) == 5.0


def test_the_model_skips_only_lengths_no_rule_with_a_table_judges():
    th = Thresholds(0.2, 5.0, "test", by_length={DISTANCE: {0: 5.0}, KEY_MISSES: {0: 0.2, 2: 0.3}})
    assert not th.model_skips(1) and not th.model_skips(5)  # class 2: the key-miss rule still judges it
    assert th.model_skips(3) and th.model_skips(64)
    assert not Thresholds(0.2, 5.0, "older bundle").model_skips(64)  # nothing calibrated by length
    assert th.shown(1) == (0.2, 5.0) and th.shown(64) == (1.0, math.inf)  # events state 1: no share exceeds it
