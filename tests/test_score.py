"""Submission format handling (pipeline.submission) and the `score` tool (pipeline.tools.score)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.__main__ import main as cli_main
from pipeline.errors import DataError
from pipeline.submission import (
    NORMAL_PREDICTION,
    format_prediction_string,
    parse_prediction_string,
    read_submission,
    read_submission_rows,
    to_submission,
    validate_submission,
)
from pipeline.tools.score import main as score_main

TRUTH_CSV = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
img_a,Aortic enlargement,0,R1,0.0,0.0,10.0,10.0
img_a,Aortic enlargement,0,R1,20.0,20.0,30.0,30.0
img_b,No finding,14,R2,,,,
img_c,Cardiomegaly,3,R3,100.0,100.0,200.0,150.0
"""

# class 0: TP(.9) FP(.8) TP(.7) -> AP 5/6; class 14: TP on img_b first -> 1; class 3: TP -> 1
GOOD_ROWS = [
    ("img_a", "0 0.9 0 0 10 10 0 0.8 50 50 60 60 0 0.7 20 20 30 30 14 0.1 0 0 1 1"),
    ("img_b", "14 1 0 0 1 1"),
    ("img_c", "3 0.6 100 100 200 150"),
]
GOOD_MAP = (5 / 6 + 1 + 1) / 3


def write_sub(path, rows, header="image_id,PredictionString"):
    path.write_text(header + "\n" + "".join(f"{i},{s}\n" for i, s in rows))
    return path


@pytest.fixture
def truth(tmp_path):
    p = tmp_path / "truth.csv"
    p.write_text(TRUTH_CSV)
    return p


# ------------------------------------------------------------------------- PredictionString
def test_format_prediction_string():
    rows = [(3, 0.123456789, 100.04, 200.26, 300, 400.5), (14, 1.0, 0, 0, 1, 1), (0, 1e-5, 1.0, 2.0, 3.0, 4.0)]
    assert format_prediction_string(rows) == "3 0.123457 100 200.3 300 400.5 14 1 0 0 1 1 0 1e-05 1 2 3 4"
    assert format_prediction_string([]) == NORMAL_PREDICTION == "14 1 0 0 1 1"
    with pytest.raises(ValueError):
        format_prediction_string([(1.5, 0.5, 0, 0, 1, 1)])
    with pytest.raises(ValueError):
        format_prediction_string([(1, float("nan"), 0, 0, 1, 1)])


def test_parse_round_trip():
    rows = [(3, 0.5, 100.0, 200.5, 300.0, 400.0), (14, 1.0, 0.0, 0.0, 1.0, 1.0)]
    assert parse_prediction_string(format_prediction_string(rows), "x") == rows
    assert parse_prediction_string("  2 0.5  1 2 3 4 ", "x") == [(2, 0.5, 1.0, 2.0, 3.0, 4.0)]


@pytest.mark.parametrize("text, message", [
    ("0 0.5 1 2 3", "5 numbers, not a multiple of 6"),
    ("0 0.5 1 2 3 four", "'four' is not a number"),
    ("15 0.5 1 2 3 4", "class id '15' is not an integer in 0..14"),
    ("1.5 0.5 1 2 3 4", "class id '1.5'"),
    ("-1 0.5 1 2 3 4", "class id '-1'"),
    ("1 0.5 10 2 3 4", "x_max < x_min"),
    ("1 nan 1 2 3 4", "non-finite"),
    ("", "empty PredictionString"),
])
def test_parse_errors_name_where(text, message):
    with pytest.raises(DataError) as err:
        parse_prediction_string(text, "sub.csv line 17")
    assert "sub.csv line 17" in str(err.value)
    assert message in str(err.value)


def test_parse_reports_which_prediction():
    with pytest.raises(DataError, match="prediction 2: class id '99'"):
        parse_prediction_string("1 0.5 1 2 3 4 99 0.5 1 2 3 4", "here")


# ---------------------------------------------------------------------------- files and tables
def test_read_submission_long_table(tmp_path):
    det = read_submission(write_sub(tmp_path / "s.csv", GOOD_ROWS))
    assert list(det.columns) == ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]
    assert len(det) == 6
    assert det["image_id"].tolist() == ["img_a"] * 4 + ["img_b", "img_c"]
    assert det["class_id"].tolist() == [0, 0, 0, 14, 14, 3]
    assert det.iloc[5].tolist()[2:] == [0.6, 100.0, 100.0, 200.0, 150.0]


def test_read_submission_accepts_bom_and_blank_trailing_line(tmp_path):
    p = tmp_path / "s.csv"
    p.write_bytes(b"\xef\xbb\xbfimage_id,PredictionString\nimg_b,14 1 0 0 1 1\n\n")
    assert read_submission(p)["image_id"].tolist() == ["img_b"]


@pytest.mark.parametrize("content, message", [
    ("id,PredictionString\na,14 1 0 0 1 1\n", "line 1: header is 'id,PredictionString'"),
    ("image_id,PredictionString\na,14 1 0 0 1 1\na,14 1 0 0 1 1\n", "line 3: duplicate image_id 'a' (first on line 2)"),
    ("image_id,PredictionString\na,\n", "line 2: empty PredictionString"),
    ("image_id,PredictionString\na,14 1 0 0 1 1,x\n", "line 2: 3 fields"),
    ("image_id,PredictionString\na,14 1 0 0 1\n", "line 2: 5 numbers"),
    ("", "the file is empty"),
])
def test_read_submission_errors_name_the_line(tmp_path, content, message):
    p = tmp_path / "s.csv"
    p.write_text(content)
    with pytest.raises(DataError) as err:
        read_submission(p)
    assert message in str(err.value)
    assert str(p) in str(err.value)


def test_read_submission_lists_every_bad_line(tmp_path):
    p = write_sub(tmp_path / "s.csv", [("a", "1 0.5 1 2 3"), ("b", "14 1 0 0 1 1"), ("c", "20 1 0 0 1 1")])
    with pytest.raises(DataError) as err:
        read_submission(p)
    assert "2 problem(s)" in str(err.value)
    assert "line 2" in str(err.value) and "line 4" in str(err.value)


def test_to_submission_order_normal_default_and_score_order():
    det = pd.DataFrame({
        "image_id": ["b", "b", "a"], "class_id": [3, 0, 14], "score": [0.2, 0.9, 0.7],
        "x_min": [10.0, 1.0, 0.0], "y_min": [20.0, 2.0, 0.0], "x_max": [30.0, 3.0, 1.0], "y_max": [40.0, 4.0, 1.0],
    })
    sub = to_submission(det, ["c", "b", "a"])
    assert sub["image_id"].tolist() == ["c", "b", "a"]
    assert sub["PredictionString"].tolist() == ["14 1 0 0 1 1", "0 0.9 1 2 3 4 3 0.2 10 20 30 40", "14 0.7 0 0 1 1"]
    validate_submission(sub, ["c", "b", "a"], "sub")
    with pytest.raises(DataError, match="not in the submission's id list"):
        to_submission(det, ["a"])
    with pytest.raises(DataError, match="duplicate image id"):
        to_submission(det, ["a", "b", "a"])


def test_to_submission_round_trips_through_read_submission(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    det = pd.DataFrame({"image_id": rng.choice([f"i{k}" for k in range(30)], n), "class_id": rng.integers(0, 15, n),
                        "score": np.round(rng.random(n), 4)})
    xy = np.round(rng.uniform(0, 1000, (n, 2)), 1)
    det["x_min"], det["y_min"] = xy[:, 0], xy[:, 1]
    det["x_max"], det["y_max"] = xy[:, 0] + 50.5, xy[:, 1] + 20
    ids = [f"i{k}" for k in range(40)]
    sub = to_submission(det, ids)
    p = tmp_path / "s.csv"
    sub.to_csv(p, index=False)
    back = read_submission(p)
    real = back[~((back["class_id"] == 14) & (back["score"] == 1) & ~back["image_id"].isin(det["image_id"]))]
    key = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]
    pd.testing.assert_frame_equal(real.sort_values(key).reset_index(drop=True)[key],
                                  det.sort_values(key).reset_index(drop=True)[key], check_dtype=False)
    assert len(back) - len(real) == 40 - det["image_id"].nunique()


def test_validate_submission_errors():
    ok = pd.DataFrame({"image_id": ["a", "b"], "PredictionString": ["14 1 0 0 1 1", "1 0.5 1 2 3 4"]})
    validate_submission(ok, ["a", "b"], "sub")
    with pytest.raises(DataError, match="not in the expected order; row 1 is 'a', expected 'b'"):
        validate_submission(ok, ["b", "a"], "sub")
    with pytest.raises(DataError, match="1 expected image\\(s\\) missing, e.g. \\['c'\\]"):
        validate_submission(ok, ["a", "b", "c"], "sub")
    with pytest.raises(DataError, match="'b' appears 2 times"):
        validate_submission(pd.concat([ok, ok.iloc[[1]]]), ["a", "b"], "sub")
    bad = ok.assign(PredictionString=["14 1 0 0 1 1", ""])
    with pytest.raises(DataError, match="sub row 2 \\(image 'b'\\): empty PredictionString"):
        validate_submission(bad, ["a", "b"], "sub")
    with pytest.raises(DataError, match="missing column"):
        validate_submission(ok.rename(columns={"PredictionString": "pred"}), ["a", "b"], "sub")


# -------------------------------------------------------------------------------- score tool
def test_score_prints_table(truth, tmp_path, capsys):
    sub = write_sub(tmp_path / "s.csv", GOOD_ROWS)
    assert score_main(["--truth", str(truth), "--submission", str(sub)]) == 0
    out = capsys.readouterr().out
    assert "Aortic enlargement" in out and "Cardiomegaly" in out and "No finding" in out
    assert "0.8333" in out
    assert f"mAP@0.4 over 3 classes: {GOOD_MAP:.4f}" in out


def test_score_json_through_the_cli(truth, tmp_path, capsys):
    sub = write_sub(tmp_path / "s.csv", GOOD_ROWS)
    assert cli_main(["score", "--truth", str(truth), "--submission", str(sub), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["map"] == pytest.approx(GOOD_MAP)
    assert result["per_class"] == {"0": pytest.approx(5 / 6), "3": 1.0, "14": 1.0}
    assert set(result) == {"map", "per_class"}


def test_score_iou_threshold_flag(truth, tmp_path, capsys):
    # img_c box has IoU 0.5 with the truth: matches at 0.4 and 0.5, not at 0.6
    rows = [("img_a", "14 0.1 0 0 1 1"), ("img_b", "14 1 0 0 1 1"), ("img_c", "3 0.6 100 100 200 125")]
    sub = write_sub(tmp_path / "s.csv", rows)
    for thr, ap in [("0.5", 1.0), ("0.6", 0.0)]:
        assert score_main(["--truth", str(truth), "--submission", str(sub), "--json", "--iou-thr", thr]) == 0
        assert json.loads(capsys.readouterr().out)["per_class"]["3"] == ap


@pytest.mark.parametrize("rows, header, message", [
    ([("img_a", "0 0.9 0 0 10"), *GOOD_ROWS[1:]], None, "line 2: 5 numbers, not a multiple of 6"),
    ([GOOD_ROWS[0], ("img_b", "15 1 0 0 1 1"), GOOD_ROWS[2]], None, "line 3: prediction 1: class id '15'"),
    (GOOD_ROWS[:2], None, "1 truth image(s) have no row, e.g. ['img_c']"),
    ([*GOOD_ROWS, ("img_zzz", "14 1 0 0 1 1")], None, "line 5: image_id 'img_zzz' is not in the truth"),
    ([*GOOD_ROWS, ("img_b", "14 1 0 0 1 1")], None, "line 5: duplicate image_id 'img_b' (first on line 3)"),
    (GOOD_ROWS, "image_id,PredictionStrings", "line 1: header is 'image_id,PredictionStrings'"),
])
def test_score_bad_submission_exits_2_with_message(truth, tmp_path, capsys, rows, header, message):
    sub = write_sub(tmp_path / "s.csv", rows, header or "image_id,PredictionString")
    assert score_main(["--truth", str(truth), "--submission", str(sub)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ")
    assert message in captured.err
    assert str(sub) in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert captured.out == ""


def test_score_bad_truth_exits_2(tmp_path, capsys):
    sub = write_sub(tmp_path / "s.csv", GOOD_ROWS)
    bad = tmp_path / "truth.csv"
    bad.write_text("image_id,class_id,x_min,y_min,x_max\nimg_a,0,0,0,10\n")
    assert score_main(["--truth", str(bad), "--submission", str(sub)]) == 2
    assert "lacks column(s) ['y_max']" in capsys.readouterr().err
    bad.write_text("image_id,class_id,x_min,y_min,x_max,y_max\nimg_a,0,0,0,10,10\nimg_b,Cardio,0,0,10,10\n")
    assert score_main(["--truth", str(bad), "--submission", str(sub)]) == 2
    assert "line 3: class_id 'Cardio'" in capsys.readouterr().err
    assert score_main(["--truth", str(tmp_path / "nope.csv"), "--submission", str(sub)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_score_notes_repeated_no_finding_rows(tmp_path, capsys):
    # raw train.csv style: 2 readers said "No finding" on img_b -> 2 boxes 0,0,1,1, one can be matched
    truth = tmp_path / "truth.csv"
    truth.write_text(TRUTH_CSV + "img_b,No finding,14,R5,,,,\n")
    sub = write_sub(tmp_path / "s.csv", GOOD_ROWS)
    assert score_main(["--truth", str(truth), "--submission", str(sub), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    # class 14: TP (img_b, recall 1/2), FP (img_a) -> AP 0.5
    assert result["per_class"]["14"] == pytest.approx(0.5)
    assert "1 truth image(s) have several 'No finding' rows" in captured.err
    assert "recall is at most 0.500" in captured.err


def test_real_sample_submission_reads_and_validates(real_dir):
    path = real_dir / "vinbigdata" / "sample_submission.csv"
    det = read_submission(path)
    ids = pd.read_csv(real_dir / "vinbigdata" / "test_meta.csv", dtype={"image_id": str})["image_id"].tolist()
    assert len(det) == len(ids) == 3000
    assert (det["class_id"] == 14).all() and (det["score"] == 1).all()
    assert det[["x_min", "y_min", "x_max", "y_max"]].drop_duplicates().values.tolist() == [[0, 0, 1, 1]]
    rows = read_submission_rows(path)
    validate_submission(rows, rows["image_id"].tolist(), str(path))
    assert set(rows["image_id"]) == set(ids)
    # to_submission with no detections reproduces the sample file's rows
    assert to_submission(det.iloc[:0], rows["image_id"].tolist())[["image_id", "PredictionString"]].equals(
        rows[["image_id", "PredictionString"]])
