"""`gatesweep import` refuses at the edge, against a real MLflow server: config columns checked by the
trainer's own rules, non-finite or negative losses and times, non-UTF-8 text, over-long or malformed
fields and unsafe names are one line (file, line, column, fix), exit 2, nothing imported; a UTF-8 byte
order mark is accepted. The same for curve CSVs and logs folders."""

from __future__ import annotations

import uuid

import pytest

from analysis.fetch import fetch_histories, fetch_runs
from gatesweep.cli import main as gatesweep

pytestmark = pytest.mark.mlflow

HEADER = "run_id,seed,attn_gate,gate_pos,learning_rate,num_iterations,final_val_loss,train_time_ms,gpu_name,notes\n"
GOOD = "r1,1,none,sdpa,0.0036,100,3.5,1000.5,NVIDIA H100,first run\n"


def row(**kw: str) -> str:
    """A row after GOOD, with some fields replaced: the bad row is never the first."""
    cells = dict(run_id="r2", seed="2", attn_gate="headwise", gate_pos="sdpa", learning_rate="0.0036",
                 num_iterations="100", final_val_loss="3.4", train_time_ms="1001.5", gpu_name="NVIDIA H100",
                 notes="")
    cells.update(kw)
    return ",".join(cells.values()) + "\n"


RESULTS_CASES = [
    ("gate_not_a_choice", row(attn_gate="gated"),
     ["results.csv:3: attn_gate='gated' is not one of none, headwise, elementwise, const", "fix the value"]),
    ("formula_in_a_number_column", row(learning_rate='"=HYPERLINK(""http://x"",""y"")"'),
     ["results.csv:3: learning_rate=", "is not a number"]),
    ("formula_in_a_choice_column", row(gate_pos="\"+cmd|' /C calc'!A0\""),
     ["results.csv:3: gate_pos=", "is not one of sdpa, value"]),
    ("lr_negative", row(learning_rate="-0.1"), ["results.csv:3: learning_rate=-0.1 must be > 0"]),
    ("iterations_absurd", row(num_iterations="1e30"), ["results.csv:3: num_iterations=1e+30 is out of range"]),
    ("seed_too_large", row(seed="9223372036854775808"), ["results.csv:3: seed=", "out of range"]),
    ("loss_inf", row(final_val_loss="inf"), ["results.csv:3: final_val_loss='inf' must be a finite number >= 0"]),
    ("loss_nan", row(final_val_loss="nan"), ["results.csv:3: final_val_loss='nan' must be a finite number >= 0"]),
    ("loss_negative", row(final_val_loss="-3.4"), ["results.csv:3: final_val_loss='-3.4' must be a finite"]),
    ("time_negative", row(train_time_ms="-5"), ["results.csv:3: train_time_ms='-5' must be a finite number >= 0"]),
    ("notes_too_long", row(notes="x" * 6000), ["results.csv:3: column notes holds 6,000 characters", "at most 5,000"]),
    ("field_over_the_csv_limit", row(notes="y" * 200_000), ["results.csv:3: malformed CSV", "shorten the field"]),
    ("run_id_is_a_path", row(run_id="../../etc/passwd"), ["results.csv:3: run_id '../../etc/passwd' is not a plain name"]),
    ("unquoted_comma", row(notes="re-run, after a reboot"), ["results.csv:3: 11 fields but the header has 10",
                                                             "quote fields"]),
    ("stage_formula", None, ["results.csv:3: stage '=1+1' is not a plain name", "rename the stage"]),
    ("column_name_formula", None, ["results.csv:1: column name '=cmd' is not a plain name", "rename the column"]),
]


@pytest.fixture
def exp(mlflow_server):
    name = f"test-edges-{uuid.uuid4().hex[:8]}"
    return name, ["--experiment", name, "--tracking-uri", mlflow_server.uri]


def run_cli(argv, capsys) -> tuple[int, list[str], str]:
    rc = gatesweep(argv)
    out = capsys.readouterr()
    return rc, out.err.splitlines(), out.out


def assert_one_line(rc, err, parts):
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    for part in parts:
        assert part in err[0], (part, err[0])


def experiment_exists(uri: str, name: str) -> bool:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri).get_experiment_by_name(name) is not None


@pytest.mark.parametrize("case, bad, parts", RESULTS_CASES, ids=[c[0] for c in RESULTS_CASES])
def test_a_bad_results_row_is_one_line_and_nothing_is_imported(case, bad, parts, tmp_path, exp, capsys, mlflow_server):
    name, common = exp
    text = HEADER + GOOD + (bad or "")
    if case == "stage_formula":
        text = HEADER.replace("notes", "notes,stage") + GOOD.replace("\n", ",s1\n") + row(notes=",=1+1")
    elif case == "column_name_formula":
        text = HEADER.replace("gpu_name", "=cmd") + GOOD
    path = tmp_path / "results.csv"
    path.write_text(text)
    stage = [] if case == "stage_formula" else ["--stage", "s1"]  # that case's CSV has a stage column
    rc, err, _ = run_cli(["import", str(path), *stage, *common], capsys)
    assert_one_line(rc, err, parts)
    assert str(path) in err[0]
    assert not experiment_exists(mlflow_server.uri, name)  # read and checked before anything is written


def test_non_utf8_text_is_one_line_naming_the_line(tmp_path, exp, capsys, mlflow_server):
    name, common = exp
    path = tmp_path / "results.csv"
    path.write_bytes((HEADER + GOOD).encode() + row(notes="caf\udce9").encode("utf-8", "surrogateescape"))
    rc, err, _ = run_cli(["import", str(path), "--stage", "s1", *common], capsys)
    assert_one_line(rc, err, [f"{path}:3: not UTF-8 text (byte 0xe9", "save the file as UTF-8"])
    assert not experiment_exists(mlflow_server.uri, name)


def test_a_bad_stage_option_is_refused(tmp_path, exp, capsys, mlflow_server):
    name, common = exp
    path = tmp_path / "results.csv"
    path.write_text(HEADER + GOOD)
    rc, err, _ = run_cli(["import", str(path), "--stage", "+cmd", *common], capsys)
    assert_one_line(rc, err, ["--stage: stage '+cmd' is not a plain name"])
    assert not experiment_exists(mlflow_server.uri, name)


def test_a_byte_order_mark_is_accepted_and_config_values_take_the_trainers_types(tmp_path, exp, capsys, mlflow_server):
    name, common = exp
    path = tmp_path / "results.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + GOOD + row(num_iterations="100.0", notes='"=SUM(A1), kept"')).encode())
    rc, err, out = run_cli(["import", str(path), "--stage", "s1", *common], capsys)
    assert rc == 0, err
    assert "imported 2 run(s)" in out
    runs = fetch_runs([name], stage="s1", tracking_uri=mlflow_server.uri).set_index("trial_id")
    assert sorted(runs["attn_gate"]) == ["headwise", "none"]
    assert runs["num_iterations"].tolist() == [100, 100]  # "100.0" became the trainer's int
    from mlflow import MlflowClient

    notes = {MlflowClient(mlflow_server.uri).get_run(r).data.tags.get("mlflow.note.content")
             for r in runs["mlflow_run_id"]}
    assert notes == {"first run", "=SUM(A1), kept"}  # free text is kept verbatim


# ---------------------------------------------------------------- curve CSVs and logs folders
CURVE_HEADER = "run_id,step,val_loss,train_time_ms,attn_gate\n"
CURVE_GOOD = "r1,0,10.0,0,none\nr1,50,5.0,500,none\nr1,100,3.5,1000,none\n"
CURVE_CASES = [
    ("val_loss_inf", CURVE_GOOD + "r2,0,inf,0,headwise\n", ["log_curves.csv:5: val_loss='inf' must be a finite"]),
    ("time_negative", CURVE_GOOD + "r2,0,10.0,-1,headwise\n", ["log_curves.csv:5: train_time_ms='-1' must be a finite"]),
    ("gate_not_a_choice", CURVE_GOOD + "r2,0,10.0,0,gated\n", ["log_curves.csv:5: attn_gate='gated' is not one of"]),
    ("step_absurd", CURVE_GOOD + "r2,100000000000,10.0,0,headwise\n", ["log_curves.csv:5: needs a run_id and an integer step"]),
    ("field_too_long", CURVE_GOOD + "r2,0,10.0,0," + "h" * 5001 + "\n", ["log_curves.csv:5: column attn_gate holds 5,001"]),
]
LOG = ("step:0/100 val_loss:10.0 train_time:0ms step_avg:nanms\n"
       "step:1/100 train_loss:9.5 train_time:10ms step_avg:nanms\n"
       "step:100/100 val_loss:{loss} train_time:1000ms step_avg:10.00ms\n")


@pytest.fixture
def imported(tmp_path, exp, capsys):
    name, common = exp
    path = tmp_path / "results.csv"
    path.write_text(HEADER + GOOD + row())
    assert gatesweep(["import", str(path), "--stage", "s1", *common]) == 0
    capsys.readouterr()
    return name, common


def histories_of(uri: str, name: str):
    """The runs' val_loss histories (their train_time_ms history holds the summary from the import)."""
    runs = fetch_runs([name], tracking_uri=uri)
    return fetch_histories(runs["mlflow_run_id"].tolist(), ("val_loss",), tracking_uri=uri)


@pytest.mark.parametrize("case, text, parts", CURVE_CASES, ids=[c[0] for c in CURVE_CASES])
def test_a_bad_curve_csv_is_one_line_and_attaches_nothing(case, text, parts, tmp_path, imported, capsys, mlflow_server):
    name, common = imported
    path = tmp_path / "log_curves.csv"
    path.write_text(CURVE_HEADER + text)
    rc, err, _ = run_cli(["import", str(path), *common], capsys)
    assert_one_line(rc, err, parts)
    assert histories_of(mlflow_server.uri, name).empty


def test_a_curve_csv_with_a_byte_order_mark_attaches(tmp_path, imported, capsys, mlflow_server):
    name, common = imported
    path = tmp_path / "log_curves.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (CURVE_HEADER + CURVE_GOOD).encode())
    rc, err, out = run_cli(["import", str(path), *common], capsys)
    assert rc == 0, err
    assert "attached histories from log_curves.csv to 1 run(s)" in out
    h = histories_of(mlflow_server.uri, name)
    assert sorted(h[h["key"] == "val_loss"]["value"]) == [3.5, 5.0, 10.0]


@pytest.mark.parametrize("case, content, parts", [
    ("val_loss_nan", LOG.format(loss="nan").encode(), ["r1.txt:3: val_loss='nan' must be a finite number >= 0"]),
    ("val_loss_inf", LOG.format(loss="inf").encode(), ["r1.txt:3: val_loss='inf' must be a finite number >= 0"]),
    ("not_utf8", b"Running pytorch 2.5 \xff\n" + LOG.format(loss="3.5").encode(), ["r1.txt:1: not UTF-8 text (byte 0xff"]),
], ids=["val_loss_nan", "val_loss_inf", "not_utf8"])
def test_a_bad_log_is_one_line_and_attaches_nothing(case, content, parts, tmp_path, imported, capsys, mlflow_server):
    name, common = imported
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "r2.txt").write_text(LOG.format(loss="3.4"))
    (logs / "r1.txt").write_bytes(content)
    rc, err, _ = run_cli(["import", str(logs), *common], capsys)
    assert_one_line(rc, err, parts)
    assert histories_of(mlflow_server.uri, name).empty


def test_logs_with_a_byte_order_mark_attach(tmp_path, imported, capsys, mlflow_server):
    name, common = imported
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "r1.txt").write_bytes(b"\xef\xbb\xbf" + LOG.format(loss="3.5").encode())
    rc, err, out = run_cli(["import", str(logs), *common], capsys)
    assert rc == 0, err
    h = histories_of(mlflow_server.uri, name)
    assert sorted(h[h["key"] == "val_loss"]["value"]) == [3.5, 10.0]
