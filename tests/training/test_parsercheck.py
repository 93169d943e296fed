"""``logad-train parser-check``: reference groups from Loghub's templates, and grouping accuracy."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from logbert_core.config import load_settings
from logbert_core.parsing import TemplateIndex
from training.cli import main
from training.parsercheck import (
    CheckRow,
    description_length,
    grouping_accuracy,
    later_unseen_share,
    markdown,
    read_reference,
    singleton_share,
)

LINES = [
    "081109 203518 143 INFO dfs.DataNode: Receiving block blk_1 src: /10.0.0.1:5 dest: /10.0.0.2:50010",
    "081109 203519 145 INFO dfs.DataNode: Receiving block blk_2 src: /10.0.0.3:7 dest: /10.0.0.4:50010",
    "081109 203520 147 INFO dfs.DataNode: PacketResponder 1 for block blk_1 terminating",
    "081109 203521 149 INFO dfs.DataNode: PacketResponder 2 for block blk_2 terminating",
    "081109 203522 150 WARN dfs.DataNode: Got exception while serving blk_3 to /10.0.0.5",
    "a line no template matches",
]
TEMPLATES = ["EventId,EventTemplate",
             "E1,Receiving block <*> src: <*> dest: <*>",
             "E2,PacketResponder <*> for block <*> terminating",
             "E3,Got exception while serving <*> to <*>"]


def loghub(tmp_path: Path) -> Path:
    d = tmp_path / "loghub" / "Tiny"
    d.mkdir(parents=True)
    (d / "Tiny_2k.log").write_text("\n".join(LINES) + "\n")
    (d / "Tiny_2k.log_templates.csv").write_text("\n".join(TEMPLATES) + "\n")
    return d


def test_reference_groups_take_the_content_from_where_the_template_matches(tmp_path: Path) -> None:
    ref = read_reference(loghub(tmp_path))
    assert ref.templates == 3 and ref.unmatched == 1 and len(ref.contents) == 5
    assert ref.contents[0] == "Receiving block blk_1 src: /10.0.0.1:5 dest: /10.0.0.2:50010"
    assert ref.contents[4] == "Got exception while serving blk_3 to /10.0.0.5"
    assert ref.groups[0] == ref.groups[1] != ref.groups[2] == ref.groups[3] != ref.groups[4]


def test_grouping_accuracy_counts_lines_grouped_exactly_as_the_reference() -> None:
    ref = ["a", "a", "b", "b", "c"]
    assert grouping_accuracy([1, 1, 2, 2, 3], ref) == 1.0
    assert grouping_accuracy([1, 1, 1, 1, 3], ref) == pytest.approx(1 / 5)  # a and b merged: only c is right
    assert grouping_accuracy([1, 2, 3, 3, 4], ref) == pytest.approx(3 / 5)  # a split: b and c are right
    with pytest.raises(ValueError, match="2 mined ids for 5"):
        grouping_accuracy([1, 2], ref)


def test_the_new_family_defaults_group_the_fixture_and_the_check_prints_them(tmp_path: Path) -> None:
    folder = loghub(tmp_path)
    ref = read_reference(folder)
    index = TemplateIndex(load_settings(None).drain_params())
    assert grouping_accuracy([index.mine(c) for c in ref.contents], ref.groups) == 1.0
    result = CliRunner().invoke(main, ["parser-check", "--loghub", str(folder.parent), "--sim-th", "0.4,0.7",
                                       "--no-masks"])
    assert result.exit_code == 0, result.output
    assert "| Tiny | 5 (1 unmatched) | 3 | 1.000 / 3 | 1.000 / 3 |" in result.output
    assert "sim_th 0.7, no masks: accuracy / templates" in result.output
    # the label-free statistics: lines 3-5 (PacketResponder, Got exception) are all new against lines 1-2; one
    # template (Got exception) occurs once
    # ... for both settings, each with its description length (kbit; "*" marks the least)
    assert re.search(r"\| Tiny \| 1\.000 / 0\.200 / \d+\.\d\*? \| 1\.000 / 0\.200 / \d+\.\d\*? \|", result.output)
    assert "least description length picks" in result.output and "mean accuracy of the picks" in result.output
    bad = CliRunner().invoke(main, ["parser-check", "--loghub", str(folder.parent), "--sim-th", "1.5"])
    assert bad.exit_code == 2 and "similarity thresholds lie in (0, 1]" in bad.output


def test_the_label_free_statistics_count_later_novelty_and_one_off_templates() -> None:
    assert later_unseen_share([1, 2, 1, 3]) == 0.5  # later half [1, 3]: 3 is new
    assert later_unseen_share([1, 1, 1, 1]) == 0.0 and later_unseen_share([]) == 0.0
    assert singleton_share([1, 1, 2, 3]) == 0.5 and singleton_share([]) == 0.0


def test_the_description_length_counts_templates_choices_and_parameter_values() -> None:
    templates = {0: "a <*>", 1: "b"}
    # template texts 8 * (5 + 1) + 8 * (1 + 1); choices -2 log2(2/3) - log2(1/3); position 1 of template 0 takes
    # "1" and "2": a dictionary of 8 * (1 + 1) each, and one bit a line
    expected = 64 + (-2 * math.log2(2 / 3) - math.log2(1 / 3)) + 32 + 2
    assert description_length(["a 1", "a 2", "b"], [0, 0, 1], templates) == pytest.approx(expected)
    # a line with more tokens than its template is sent whole
    assert description_length(["a 1 x"], [0], templates) == pytest.approx(48 + 0 + 48)
    assert description_length([], [], templates) == 0.0
    # merging two literal lines into one template with a parameter is cheaper than keeping both texts: the
    # criterion's known lean towards merging
    split = description_length(["open file", "close file"], [0, 1], {0: "open file", 1: "close file"})
    merged = description_length(["open file", "close file"], [0, 0], {0: "<*> file"})
    assert merged < split


def test_the_check_states_what_a_per_family_choice_of_the_settings_could_reach_at_most() -> None:
    def row(system: str, a: float, b: float) -> CheckRow:
        return CheckRow(system, 10, 2, 0, {"A": (a, 2), "B": (b, 3)}, {"A": (0.0, 0.0, 1.0), "B": (0.0, 0.0, 2.0)})

    text = markdown([row("one", 1.0, 0.5), row("two", 0.6, 0.9)], ["A", "B"])  # means: A 0.8, B 0.7
    assert "| mean (best of the settings, systems) | | | 0.800 (1) | 0.700 (1) |" in text
    assert "best of these 2 settings groups at a mean of 0.950, against 0.800 for the best single setting (A)" in text
