"""Round 2 of the real-text study (sweeps/offline_stage1_v2.yaml, 34 trials over four looks) replayed with
the integrated t levels: the decisions the sweep made with the simulated levels stand, at the same looks.

VALUES: final_val_loss per configuration and seed from the records
(../shared/device-results/2026-12-04-h200/offline_stage1_v2_records_looks1-4.tgz, runs/*/track/summary.json);
LOGGED: what runs/offline_stage1_v2/sequential.json says the sweep decided (levels from 200k simulated paths).
"""

from __future__ import annotations

import pytest

from analysis.sequential import DECIDED, UNDECIDED, Design, decide

NONE, HW, EW, CONST, NS = ("attn_gate=none", "attn_gate=headwise", "attn_gate=elementwise", "attn_gate=const",
                           "attn_gate=headwise gate_act=ns_sigmoid")
VALUES = {
    NONE: [3.5644991397857666, 3.5930233001708984, 3.5754098892211914, 3.5841221809387207, 3.5690536499023438,
           3.5467183589935303, 3.572969436645508, 3.583709955215454],
    HW: [3.479670524597168, 3.496328592300415, 3.469053268432617, 3.4818789958953857, 3.5058364868164062,
         3.452505111694336],
    EW: [3.5681140422821045, 3.5804443359375, 3.565894842147827, 3.562166929244995, 3.5631930828094482,
         3.5628180503845215, 3.5890772342681885, 3.566767930984497],
    CONST: [3.612684488296509, 3.6167330741882324, 3.6098358631134033, 3.6008951663970947, 3.6074323654174805,
            3.6038265228271484],
    NS: [3.521843910217285, 3.545009136199951, 3.555417776107788, 3.521256923675537, 3.5096487998962402,
         3.530724048614502],
}
# name -> (status, look, alpha_j, p at each look it saw, the logged level of its deciding / last look)
LOGGED = {
    HW: (DECIDED, 3, 0.0125, [0.041556404304148156, 0.00024071891161154776, 2.9703858078758937e-05], 0.0029205507592253823),
    EW: (UNDECIDED, 4, 0.05, [0.6781491466396726, 0.15170539074262668, 0.3967872030305553, 0.47279569082799905],
         0.04087605108207316),
    CONST: (DECIDED, 3, 0.0125, [0.208892684778701, 0.02055092288971153, 0.0019057325892795388], 0.0029205507592253823),
    NS: (DECIDED, 3, 0.025, [0.037583126908148044, 0.0164583298961231, 0.0035631753030238547], 0.007115686710470322),
}
DESIGN = Design((2, 4, 6, 8), 0.05, "obf")


def test_the_round2_decisions_stand_with_the_integrated_levels():
    values = {name: dict(enumerate(v)) for name, v in VALUES.items()}
    out = decide(DESIGN, list(range(8)), values, {name: NONE for name in LOGGED})
    for name, (status, look, alpha_j, ps, logged_level) in LOGGED.items():
        d = out.decisions[name]
        assert (d.status, d.look, d.stopped_at, d.alpha_j) == (status, look, look, alpha_j), name
        assert [h.p for h in d.history] == pytest.approx(ps, rel=1e-9), name
        assert d.threshold == DESIGN.levels(alpha_j)[look - 1]
        assert d.threshold == pytest.approx(logged_level, rel=0.03)  # the simulated levels were close here
    assert out.required() == {NONE: 8, HW: 6, EW: 8, CONST: 6, NS: 6}


def test_headwise_look_2_is_the_close_call_and_still_does_not_cross():
    """Look 2 at alpha / 4: the simulation had too few crossings there and used the normal-theory level
    (0.000220347); the integrated level is 0.000220291, headwise's p 0.000241 is above both."""
    p = LOGGED[HW][3][1]
    level = DESIGN.levels(0.0125)[1]
    assert level == pytest.approx(0.000220291, rel=1e-4) and level < p < 1.1 * level
