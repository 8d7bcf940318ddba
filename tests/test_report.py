"""Reports built from saved results: the reproduction report from demo records."""

import json
import re

from stochnorm.cli import main
from stochnorm.experiments import registry
from stochnorm.experiments.verdicts import FAILS, HOLDS, combine, compare


def test_reproduction_report_lists_every_result(shared_out, tmp_path):
    results = sorted(shared_out.glob("*/result.json"))
    assert len(results) == len(registry())
    out = tmp_path / "REPRODUCTION.md"
    assert main(["report", "--reproduction", str(shared_out), "--out", str(out)]) == 0
    text = out.read_text()
    for path in results:
        record = json.loads(path.read_text())
        assert f"## {record['experiment']} (demo, width=0.1, subset=0.005," in text
        for part in record["verdict"].get("parts", [record["verdict"]]):
            assert f"- {part['status']}: {part['summary']}" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == sum(len(json.loads(p.read_text())["figures"]) for p in results)
    assert all((out.parent / link).is_file() for link in links)
    assert "## Where our measurement disagrees with the paper" in text
    anchors = re.findall(r'<a id="([^"]+)"></a>', text)
    assert len(set(anchors)) == len(anchors) == len(results)
    # an experiment without a result is listed as such
    (shared_out / "fig1-bn-generalization" / "result.json").rename(tmp_path / "kept.json")
    try:
        assert main(["report", "--reproduction", str(shared_out), "--out", str(out)]) == 0
    finally:
        (tmp_path / "kept.json").rename(shared_out / "fig1-bn-generalization" / "result.json")
    assert "| fig1-bn-generalization | main | Fig. 1 | - | not run yet |" in out.read_text()


def test_reproduction_report_names_only_the_failing_parts_of_a_claim(shared_out, tmp_path):
    record = json.loads((shared_out / "fig1-bn-generalization" / "result.json").read_text())
    record["verdict"] = combine(
        [compare(1, 0, "gap as claimed"), compare(-1, 0, "acc lower")]
    ).to_dict()
    (tmp_path / "fig1").mkdir()
    (tmp_path / "fig1" / "result.json").write_text(json.dumps(record))
    out = tmp_path / "REPRODUCTION.md"
    assert main(["report", "--reproduction", str(tmp_path / "fig1"), "--out", str(out)]) == 0
    text = out.read_text()
    disagreements = text.split("## Where our measurement disagrees with the paper")[1]
    disagreements = disagreements.split("## fig1")[0]
    assert "acc lower" in disagreements and "gap as claimed" not in disagreements
    assert f"- {HOLDS}: gap as claimed" in text and f"- {FAILS}: acc lower" in text
    # the same experiment under other settings, its runs trained elsewhere: both listed
    record.update(overrides={"width": 1.0}, runs_trained_on=["Some GPU"])
    (tmp_path / "fig1-wide").mkdir()
    (tmp_path / "fig1-wide" / "result.json").write_text(json.dumps(record))
    dirs = [str(tmp_path / "fig1"), str(tmp_path / "fig1-wide")]
    assert main(["report", "--reproduction", *dirs, "--out", str(out)]) == 0
    text = out.read_text()
    assert "## fig1-bn-generalization (demo, width=1.0)" in text
    assert "| demo, width=1.0 |" in text and len(re.findall(r'<a id="fig1', text)) == 2
    hardware = record["provenance"]["hardware"]
    assert f"Runs trained on Some GPU; verdict computed on {hardware}" in text
