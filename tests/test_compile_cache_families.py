"""`gatesweep warmup` compiles each graph family of a spec once: trials that differ only in seeds,
learning rates, schedule lengths or paths share graphs; a gate, its position or activation, batch
shapes or compile options make another family (cluster/common/compile_cache.graph_families, pure)."""

from __future__ import annotations

from pathlib import Path

from cluster.common.compile_cache import graph_families
from sweeps.expand import expand
from sweeps.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def test_the_study_spec_has_one_family_per_gate_variant():
    trials = expand(load_spec(str(REPO / "sweeps" / "offline_stage1_v2.yaml")))
    first = graph_families([t.config.flat() for t in trials])
    labels = [trials[i].label for i in first]
    assert len(trials) > len(first) == 5  # seeds share graphs
    assert labels == ["attn_gate=none", "attn_gate=headwise", "attn_gate=elementwise", "attn_gate=const",
                      "attn_gate=headwise gate_act=ns_sigmoid"]


def test_what_makes_another_family():
    base = {"attn_gate": "none", "seed": 0, "learning_rate": 0.0036, "num_iterations": 400, "out_dir": "a"}
    same = [base | {"seed": 3, "learning_rate": 0.01, "num_iterations": 100, "out_dir": "b"}]
    assert graph_families([base, *same]) == [0]
    other = [base | {"device_batch_size": 16}, base | {"cd_tuning": True}, base | {"gate_pos": "value"}]
    assert graph_families([base, *other]) == [0, 1, 2, 3]
