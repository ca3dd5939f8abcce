"""benchmarks/plot_speedup.py writes a well-formed SVG with one line per shape that has several M."""

import json
import xml.etree.ElementTree as ET

import pytest

from benchmarks.plot_speedup import main


def test_plot_has_one_polyline_per_shape_and_method(tmp_path):
    rows = [{"N": n, "K": 64, "M": m, "bf16_us": 10.0, "sinq_us": 10.0 / (m + 1), "tinygemm_us": 5.0}
            for n in (32, 64) for m in (1, 4, 16)]  # fmt: skip
    source = tmp_path / "layers.json"
    source.write_text(json.dumps({"rows": rows}))
    out = tmp_path / "plot.svg"
    main([str(source), "--out", str(out)])
    svg = ET.parse(out).getroot()
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2 * 2  # two shapes x (SINQ, tinygemm)
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_or_malformed_inputs_are_refused_naming_the_file(tmp_path, capsys):
    malformed = tmp_path / "bad.json"
    malformed.write_text(json.dumps({"rows": [{"N": 1, "K": 2, "M": 1}]}))
    for path in (tmp_path / "absent.json", malformed):
        with pytest.raises(SystemExit):
            main([str(path), "--out", str(tmp_path / "plot.svg")])
        assert str(path) in capsys.readouterr().err
    assert not (tmp_path / "plot.svg").exists()
