"""A writer killed inside a transaction (a launcher or trainer SIGKILLed while MLflow writes) leaves a
hot rollback journal beside a sqlite store. The next connection must roll it back, and a read-only one
cannot ("attempt to write a readonly database"): the store must still count as healthy - for the
check every command makes, the store identity and the SQL reads of `table` - and read as it was before
the killed transaction. (A Ray resume test met this in CI: the rerun called the store damaged.)"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from analysis import store_sql
from sweeps.store_file import check_file
from trainer.record import file_store_id

KILLED_WRITER = """
import os, sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA cache_size=1")  # spill to the file mid-transaction: the journal is hot
con.execute("BEGIN IMMEDIATE")
for _ in range(5000):
    con.execute("INSERT INTO experiments (name, creation_time) VALUES (?, 2)", (os.urandom(64).hex(),))
print("inside", flush=True)
time.sleep(120)
"""


def _store_with_a_hot_journal(tmp_path: Path) -> Path:
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT, creation_time INTEGER)")
    con.execute("INSERT INTO experiments (name, creation_time) VALUES ('kept', 1)")
    con.commit()
    con.close()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "inside"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert Path(f"{db}-journal").stat().st_size > 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as ro:  # the premise: read-only cannot recover it
        try:
            ro.execute("SELECT count(*) FROM experiments").fetchall()
        except sqlite3.OperationalError as e:
            assert "readonly" in str(e)
        else:
            raise AssertionError("a read-only connection read past a hot journal: the premise no longer holds")
    return db


def test_the_store_check_rolls_a_killed_writers_journal_back(tmp_path: Path):
    db = _store_with_a_hot_journal(tmp_path)
    check_file(db)  # before: StoreFileError "not a usable MLflow store (attempt to write a readonly database)"
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT name FROM experiments").fetchall() == [("kept",)]


def test_the_store_identity_sees_the_committed_store(tmp_path: Path):
    db = _store_with_a_hot_journal(tmp_path)
    st = db.stat()
    assert file_store_id(f"sqlite:///{db}") == f"sqlite:{st.st_dev}:{st.st_ino}:1"  # before: None (no identity)


def test_the_tables_sql_reads_see_the_committed_store(tmp_path: Path):
    db = _store_with_a_hot_journal(tmp_path)
    with store_sql.connect(db) as con:
        assert con.execute("SELECT name, creation_time FROM experiments").fetchall() == [("kept", 1)]
