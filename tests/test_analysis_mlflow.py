"""analysis against a real MLflow server: fetch, import, and the CLI round trip to the study's tables."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from analysis import fetch
from analysis.cli import import_main, report_main, table_main
from analysis.fetch import TIDY_COLUMNS, fetch_histories, fetch_runs
from analysis.importer import import_results
from analysis.table import stage_table
from sweeps.errors import NoRunsError, SpecError, TrackingError
from tests.test_analysis_compat import CASES, published_csv

pytestmark = pytest.mark.mlflow
FIX = Path(__file__).parent / "fixtures" / "legacy"


@pytest.fixture(scope="module")
def _own_mlflow(tmp_path_factory):
    """A private server, used only while tests/conftest.py has no shared `mlflow_server`."""
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(root / "server.log", "w")
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
           f"sqlite:///{root}/db", "--default-artifact-root", str(root / "art"), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--app-name", "gatesweep"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, proc, root / "server.log")
        yield SimpleNamespace(uri=uri)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it forked, nothing else
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _wait_healthy(uri, proc, log_path, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"mlflow server not healthy after {timeout_s}s: {log_path.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def server(request):
    # TODO: use the shared session fixture `mlflow_server` (tests/conftest.py) directly once it lands,
    # and delete _own_mlflow.
    try:
        return request.getfixturevalue("mlflow_server")
    except pytest.FixtureLookupError:
        return request.getfixturevalue("_own_mlflow")


@pytest.fixture
def client(server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.uri)


def new_experiment() -> str:
    return f"test-analysis-{uuid.uuid4().hex[:8]}"


def log_trial(client, exp_id, parent, *, gate, seed, stage="stage1", status="FINISHED", final=None, kind="trial"):
    """A child run as every backend writes it (docs/ARCHITECTURE.md, MLflow schema)."""
    from mlflow.entities import Metric, Param, RunTag

    tags = {"mlflow.parentRunId": parent, "gatesweep.kind": kind, "trial_id": f"{gate}{seed}{stage}",
            "spec": "demo", "stage": stage, "seed": str(seed), "git_sha": "abc", "backend": "local",
            "status": status, "gpu_name": "cpu", "n_gpus": "1"}
    if status == "FAILED":
        tags["failure_reason"] = "NaN loss"
    run = client.create_run(exp_id, tags=tags, run_name=f"{gate}-{seed}")
    rid = run.info.run_id
    params = {"attn_gate": gate, "gate_pos": "sdpa", "gate_act": "sigmoid", "learning_rate": 0.0036,
              "num_iterations": 250, "warmdown_iters": 70, "batch_size": 8, "device_batch_size": 8,
              "sequence_length": 64, "seed": seed}
    t = 1_700_000_000_000
    metrics = [Metric("val_loss", 10.0 - s / 50 - seed / 10, t + s, s) for s in (0, 125, 250)]
    metrics += [Metric("train_loss", 9.0 - s / 60, t + s, s) for s in (1, 2, 250)]
    if final is not None:
        metrics += [Metric(k, v, t + 1000, 250) for k, v in
                    {"final_val_loss": final, "best_val_loss": final - 0.001, "train_time_ms": 61_000.0 + seed,
                     "ms_per_step": 244.0, "peak_mem_mib": 512.0}.items()]
    client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag("extra", "x")])
    client.set_terminated(rid, "FAILED" if status == "FAILED" else "FINISHED")
    return rid


@pytest.fixture
def logged(client):
    name = new_experiment()
    exp_id = client.create_experiment(name)
    parent = client.create_run(exp_id, tags={"gatesweep.kind": "sweep", "spec": "demo", "stage": "stage1",
                                             "backend": "local"}).info.run_id
    ids = {
        "n1": log_trial(client, exp_id, parent, gate="none", seed=1, final=3.30),
        "n2": log_trial(client, exp_id, parent, gate="none", seed=2, final=3.32),
        "e1": log_trial(client, exp_id, parent, gate="elementwise", seed=1, final=3.27),
        "e2": log_trial(client, exp_id, parent, gate="elementwise", seed=2, final=3.28),
        "f": log_trial(client, exp_id, parent, gate="elementwise", seed=3, status="FAILED"),
    }
    log_trial(client, exp_id, parent, gate="none", seed=1, stage="stage2", final=3.1)
    log_trial(client, exp_id, parent, gate="none", seed=9, final=3.0, kind="other")
    # a resumed run re-logs step 125 later: the newer value must win
    from mlflow.entities import Metric

    client.log_batch(ids["n1"], metrics=[Metric("val_loss", 1.5, 1_800_000_000_000, 125)])
    return SimpleNamespace(name=name, exp_id=exp_id, parent=parent, ids=ids)


def test_fetch_runs_tidy_table(server, logged, monkeypatch):
    monkeypatch.setattr(fetch, "_PAGE", 2)  # force several pages
    df = fetch_runs([logged.name], stage="stage1", tracking_uri=server.uri)
    assert list(df.columns[:7]) == list(TIDY_COLUMNS)
    assert sorted(df["mlflow_run_id"]) == sorted(logged.ids.values())  # other stage / kind filtered out
    row = df.set_index("mlflow_run_id").loc[logged.ids["e2"]]
    assert row["learning_rate"] == 0.0036 and isinstance(row["learning_rate"], float)
    assert row["num_iterations"] == 250 and row["seed"] == 2 and row["attn_gate"] == "elementwise"
    assert (row["final_val_loss"], row["train_time_ms"], row["peak_mem_mib"]) == (3.28, 61_002.0, 512.0)
    assert (row["status"], row["backend"], row["spec"], row["trial_id"]) == ("FINISHED", "local", "demo", "elementwise2stage1")
    failed = df.set_index("mlflow_run_id").loc[logged.ids["f"]]
    assert failed["status"] == "FAILED" and failed["final_val_loss"] != failed["final_val_loss"]  # NaN
    t = stage_table(df).set_index("attn_gate")
    assert t.loc["elementwise", "failed"] == 1 and t.loc["elementwise", "n"] == 2
    assert t.loc["elementwise", "test"] == "paired"
    assert t.loc["elementwise", "delta"] == pytest.approx(3.275 - 3.31)
    both = fetch_runs([logged.name], stage=["stage1", "stage2"], tracking_uri=server.uri)
    assert len(both) == 6 and set(both["stage"]) == {"stage1", "stage2"}


def test_fetch_histories_dedupes_resumed_steps(server, logged):
    h = fetch_histories([logged.ids["n1"], logged.ids["e1"]], tracking_uri=server.uri)
    assert list(h.columns) == ["mlflow_run_id", "key", "step", "value"]
    n1 = h[(h["mlflow_run_id"] == logged.ids["n1"]) & (h["key"] == "val_loss")]
    assert n1["step"].tolist() == [0, 125, 250]
    assert n1["value"].tolist() == pytest.approx([9.9, 1.5, 4.9])  # 125: the later re-log
    assert set(h["key"]) == {"val_loss", "train_loss"} and len(h) == 12


def test_fetch_errors(server, logged, tmp_path):
    # nothing to analyse yet (exit 66) is not an unreachable store (exit 69)
    with pytest.raises(NoRunsError, match="no trial runs") as e:
        fetch_runs([logged.name], stage="nope", tracking_uri=server.uri)
    assert e.value.exit_code == 66 and not isinstance(e.value, TrackingError)
    with pytest.raises(NoRunsError, match="no trial runs"):
        fetch_runs([logged.name], spec="other", tracking_uri=server.uri)
    with pytest.raises(NoRunsError, match="experiment 'missing-exp' not found"):
        fetch_runs(["missing-exp"], tracking_uri=server.uri)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable") as e:
        fetch_runs(["x"], tracking_uri=dead)
    assert e.value.exit_code == 69
    assert time.monotonic() - t0 < 10
    with pytest.raises(NoRunsError, match="no MLflow database"):
        fetch_runs(tracking_uri=f"sqlite:///{tmp_path}/none.db")


def test_import_is_complete_and_idempotent(server, client):
    name = new_experiment()
    res = import_results(FIX / "demo/results.csv", logs_dir=FIX / "demo/logs", experiment=name,
                         tracking_uri=server.uri)
    assert len(res.created) == 12 and res.logs_attached == 2 and len(res.missing_logs) == 10
    df = fetch_runs([name], tracking_uri=server.uri)
    assert len(df) == 12 and set(df["stage"]) == {"screen", "lr"} and set(df["backend"]) == {"import"}
    b1 = df.set_index("trial_id").loc[res_trial("demo-b1")]
    # the summary, not the log's last train_time, is the run's latest train_time_ms
    assert (b1["final_val_loss"], b1["train_time_ms"], b1["learning_rate"]) == (4.05, 6400.0, 0.0036)
    run = client.get_run(b1["mlflow_run_id"])
    tags = run.data.tags
    assert tags["gatesweep.kind"] == "trial" and tags["status"] == "FINISHED" and tags["seed"] == "1"
    assert tags["git_sha"] == "0a1b2c3d" and tags["import.run_id"] == "demo-b1"
    assert tags["torch_version"] == "2.5.0+cu124"
    parent = client.get_run(tags["mlflow.parentRunId"]).data.tags
    assert (parent["gatesweep.kind"], parent["stage"], parent["backend"]) == ("sweep", "screen", "import")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "logs")] == ["logs/demo-b1.txt"]
    h = fetch_histories([b1["mlflow_run_id"]], keys=("train_loss", "step_avg_ms"), tracking_uri=server.uri)
    tl = h[h["key"] == "train_loss"].set_index("step")["value"]
    assert tl[15] == pytest.approx(5.775) and len(tl) == 20
    assert h[h["key"] == "step_avg_ms"]["step"].min() == 12
    again = import_results(FIX / "demo/results.csv", logs_dir=FIX / "demo/logs", experiment=name,
                           tracking_uri=server.uri)
    assert again.created == [] and len(again.skipped) == 12
    assert len(fetch_runs([name], tracking_uri=server.uri)) == 12
    sweeps = client.search_runs([run.info.experiment_id], "tags.\"gatesweep.kind\" = 'sweep'")
    assert len(sweeps) == 2


def res_trial(run_id):
    from analysis.legacy import legacy_trial_id

    return legacy_trial_id("results.csv", run_id)


def test_cli_import_then_compat_reproduces_the_study(server, capsys):
    """The done-criterion: gatesweep import FILE --stage S; gatesweep table --stage S --compat --format csv."""
    name = new_experiment()
    common = ["--experiment", name, "--tracking-uri", server.uri]
    for blocks, _ in CASES.values():
        for file, stage in blocks:
            assert import_main([str(FIX / "study" / file), "--stage", stage, *common]) == 0
    capsys.readouterr()
    for stage, (blocks, columns) in CASES.items():
        argv = [a for _, s in blocks for a in ("--stage", s)] + ["--compat", "--format", "csv", *common]
        assert table_main(argv + (["--columns", columns] if columns else [])) == 0
        assert capsys.readouterr().out == published_csv(stage), stage


def test_cli_table_spec_and_report(server, client, tmp_path, capsys):
    name = new_experiment()
    common = ["--experiment", name, "--tracking-uri", server.uri]
    import_main([str(FIX / "demo/results.csv"), "--logs", str(FIX / "demo/logs"), *common])
    spec = tmp_path / "screen.yaml"
    spec.write_text(f"name: results\nstage: screen\ntracking:\n  experiment: {name}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: results\nstage: screen\ntracking:\n  experiment: {name}\naxes: {{}}\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: axes: unknown key"):  # validated like every command's spec
        table_main([str(bad), "--tracking-uri", server.uri])
    capsys.readouterr()
    assert table_main([str(spec), "--format", "md", "--tracking-uri", server.uri]) == 0
    md = capsys.readouterr().out
    assert "| elementwise | 2† " in md and "paired" in md and "baseline" in md and "p adj is Holm-adjusted" in md
    assert table_main(["--stage", "lr", *common, "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "lr_table.txt").read_text().count("elementwise") == 2
    # --skip-empty (make tables): a spec with nothing recorded yet is a note, a broken store still an error
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"name: never-ran\ntracking:\n  experiment: {new_experiment()}\n")
    capsys.readouterr()
    with pytest.raises(NoRunsError):
        table_main([str(empty), "--tracking-uri", server.uri])
    assert table_main([str(empty), "--tracking-uri", server.uri, "--skip-empty"]) == 0
    assert capsys.readouterr().out == "(never-ran: no runs yet)\n"
    with pytest.raises(TrackingError, match="unreachable"):
        table_main([str(empty), "--tracking-uri", "http://127.0.0.1:9", "--skip-empty"])
    with pytest.raises(SpecError, match="give a spec file or --stage"):
        table_main(["--tracking-uri", server.uri])
    assert report_main(["--stage", "lr", *common, "--out", str(tmp_path / "reports")]) == 0
    out = tmp_path / "reports" / "lr"
    readme = (out / "README.md").read_text()
    assert "![Final validation loss vs learning rate (95% CI)](lr_sweep.png)" in readme
    assert "| none        | 0.00468       | 2     | 4.4650     | 3.0s       |" in readme
    for f in ("final_loss.png", "lr_sweep.png", "table.csv", "compat.csv"):
        assert (out / f).stat().st_size > 100
    assert not (out / "val_loss.png").exists()  # no run of stage lr has a log
    parent = fetch.find_sweep_run([name], stage="lr", tracking_uri=server.uri)
    attached = {a.path for a in client.list_artifacts(parent, "report/lr")}
    assert {"report/lr/README.md", "report/lr/lr_sweep.png", "report/lr/compat.csv"} <= attached
    assert report_main(["--stage", "screen", *common, "--out", str(tmp_path / "reports"), "--no-attach"]) == 0
    assert (tmp_path / "reports" / "screen" / "val_loss.png").stat().st_size > 5_000
