"""Cascade: each attack runs only on the images still standing; the worst case stays what it is
without cascade for attacks whose result for an image does not depend on its batch, and fewer
gradient steps are taken."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from bench.audit.cascade import Cascade
from bench.results import read_rows
from bench.runner import run_suite
from bench.specs import AttackSpec, CellSpec, DefenseSpec, ModelSpec
from bench.suite import load_suite
from tests import masked_models as mm

# deterministic attacks only (no random start): an image's result does not depend on its batch
SUITE = {
    "name": "cascade", "seed": 0, "data": {"source": "imagefolder", "image_size": 16},
    "models": [mm.entry("robust"), mm.entry("constant")],
    "attacks": [{"name": "fgsm", "type": "fgsm", "eps": ["4/255", "8/255"]},
                {"name": "pgd", "type": "pgd", "eps": ["4/255", "8/255"], "steps": 5, "alpha": "2/255", "random_start": False}],
    "defenses": ["none", {"type": "bit_depth", "bits": 8}],
    "eval_mode": ["oblivious", "adaptive"], "adaptive_method": "bpda", "batch_size": 4,
}


def _suite(tmp, cascade: bool):
    data = tmp / "data" if (tmp / "data").is_dir() else mm.write_images(tmp / "data")
    doc = {**SUITE, "data": {**SUITE["data"], "path": str(data)}, "cascade": cascade}
    path = tmp / f"cascade-{cascade}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_suite(path)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cascade")
    return {c: run_suite(_suite(tmp, c), tmp / f"results-{c}", tmp / f"reports-{c}") for c in (False, True)}


def _worst(result):
    """The worst-case table without what a cascade changes by design: the run, the unique contributions
    (later attacks never see images already broken) and the strongest single cell (a cascaded row's
    robust accuracy counts images it never attacked)."""
    w = pd.read_parquet(result.run_dir / "worst_case.parquet")
    return w.drop(columns=["run_id", "only_broken_by", "strongest", "strongest_acc"])


def test_the_worst_case_is_the_same_with_and_without_cascade(both):
    plain, cascaded = _worst(both[False]), _worst(both[True])
    pd.testing.assert_frame_equal(plain, cascaded)
    # and so is each image's fate, and what broke it first
    images = [pd.read_parquet(both[c].run_dir / "worst_case_images.parquet") for c in (False, True)]
    pd.testing.assert_frame_equal(*images)


def test_each_row_says_how_many_images_its_attack_ran_on_and_fewer_steps_are_taken(both):
    plain = pd.read_parquet(both[False].run_dir / "results.parquet")
    cascaded = pd.read_parquet(both[True].run_dir / "results.parquet")
    assert (plain["n_attacked"] == plain["n"]).all()
    assert (cascaded["n_attacked"] <= cascaded["n"]).all() and (cascaded["n_attacked"] < cascaded["n"]).any()

    def steps(df):  # gradient steps taken, once per crafting (an oblivious one serves both defenses)
        craftings = pd.concat([df[df["eval_mode"] == "oblivious"].drop_duplicates(["model", "attack", "eps"]),
                               df[df["eval_mode"] != "oblivious"]])
        return (craftings["backward_passes"].fillna(0) * craftings["n_attacked"]).sum()

    assert steps(cascaded) < steps(plain)


def test_a_cascade_raises_no_flag_the_same_attacks_without_it_do_not(both):
    flags = [pd.read_parquet(both[c].run_dir / "results.parquet").set_index("cell_id")["flags"] for c in (False, True)]
    for cell_id, cascaded in flags[1].items():
        extra = set(str(cascaded).split(",")) - set(str(flags[0][cell_id]).split(",")) - {""}
        assert not extra, (cell_id, extra)


def test_images_misclassified_without_attack_are_never_attacked(both):
    df = pd.read_parquet(both[True].run_dir / "results.parquet").set_index(["model", "attack", "eps", "defense", "eval_mode"])
    # the constant model gets half the images right: the first attack runs on those 6 only
    assert df.loc[("constant", "fgsm", 4 / 255, "none", "oblivious"), "n_attacked"] == 6
    # the robust model: fgsm at 4/255 breaks the two images within 4 levels of 1/2 (124, 131); PGD at
    # 4/255 then runs on the other 10, and at 8/255 on those still standing
    assert df.loc[("robust", "fgsm", 4 / 255, "none", "oblivious"), "n_attacked"] == 12
    assert df.loc[("robust", "pgd", 4 / 255, "none", "oblivious"), "n_attacked"] == 10


def test_a_resumed_cascade_continues_from_the_rows_that_landed(both):
    stopped = {"n": 0}

    class Hook:  # counts the cells that landed; the run stops after 5, as Ctrl-C between cells would
        def start(self, cells, batches): pass
        def cell(self, cell): pass
        def batch(self, n): pass
        def stop(self): pass

        def cell_done(self):
            stopped["n"] += 1

    from bench.failures import Interrupted

    tmp = both[True].run_dir.parents[2]  # the same data folder as the uninterrupted run
    suite = _suite(tmp, True)
    with pytest.raises(Interrupted):
        run_suite(suite, tmp / "results-resumed", tmp / "reports-resumed", progress=Hook(), stop=lambda: stopped["n"] >= 5)
    run_dir = next((tmp / "results-resumed" / "cascade").iterdir())
    assert 0 < len(read_rows(run_dir)) < len(suite.cells())
    resumed = run_suite(suite, tmp / "results-resumed", tmp / "reports-resumed", resume=run_dir)
    assert resumed.complete
    pd.testing.assert_frame_equal(_worst(resumed), _worst(both[True]))
    n_attacked = lambda r: pd.read_parquet(r.run_dir / "results.parquet")["n_attacked"].tolist()  # noqa: E731
    assert n_attacked(resumed) == n_attacked(both[True])


# --- the state itself -------------------------------------------------------------------------------


def _cell(eps, defense="none", attack="pgd"):
    return CellSpec("s", 0, ModelSpec("m", "x"), AttackSpec(attack, attack, eps), DefenseSpec(defense), "cpu", "fp32", 4)


def test_an_image_broken_at_an_eps_stays_broken_at_every_larger_one_and_no_smaller_one():
    c = Cascade()
    labels = torch.tensor([0, 0, 0, 0])
    clean = {"none": torch.tensor([0, 0, 0, 1])}  # image 3 is wrong without attack: never attacked
    assert c.standing(_cell(4 / 255), "Linf", labels, clean).tolist() == [True, True, True, False]
    c.record(_cell(4 / 255), "Linf", labels, torch.tensor([1, 0, 0, 1]))  # image 0 broken at 4/255
    assert c.standing(_cell(8 / 255), "Linf", labels, clean).tolist() == [False, True, True, False]
    assert c.standing(_cell(2 / 255), "Linf", labels, clean).tolist() == [True, True, True, False]
    # another norm, another defense: their own state
    assert c.standing(_cell(8 / 255), "L2", labels, clean).tolist() == [True, True, True, False]
    both = {"none": clean["none"], "jpeg": torch.tensor([0, 0, 0, 0])}
    assert c.standing(_cell(8 / 255), "Linf", labels, both).tolist() == [True, True, True, True]  # standing for jpeg


def test_attacks_without_a_budget_are_not_cascaded():
    c = Cascade()
    labels = torch.tensor([0, 0])
    c.record(_cell(None, attack="cw"), "none", labels, torch.tensor([1, 1]))
    assert c.standing(_cell(None, attack="cw"), "none", labels, {"none": labels}).tolist() == [True, True]


def test_the_state_can_be_recorded_a_shard_at_a_time_and_a_crafting_never_counts_its_own_attack():
    c = Cascade()
    labels = torch.zeros(6, dtype=torch.int64)
    clean = {"none": labels.clone()}
    # shard [2, 4) of attack pgd at 4/255: it broke image 3
    c.record(_cell(4 / 255), "Linf", labels[2:4], torch.tensor([0, 1]), lo=2, n=6)
    assert c.standing(_cell(8 / 255, attack="fgsm"), "Linf", labels, clean).tolist() == [True, True, True, False, True, True]
    # the cells that share pgd 4/255's crafting (its other defenses) see what it saw, whichever was recorded first
    assert c.standing(_cell(4 / 255), "Linf", labels, clean).tolist() == [True] * 6
    c.record(_cell(4 / 255), "Linf", labels[4:6], torch.tensor([1, 0]), lo=4, n=6)  # the next shard
    assert c.standing(_cell(8 / 255, attack="fgsm"), "Linf", labels, clean).tolist() == [True, True, True, False, False, True]
