"""Attacks: the registry and the tutorial's SGD attack done right."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bench.attacks import build, check, lookup
from bench.attacks.torchattacks_attacks import names
from bench.attacks.sgd import SGD
from bench.suite import AttackSpec


class Linear(nn.Module):
    """A tiny linear classifier on 3×8×8 images; gradients are exact and cheap."""

    def __init__(self, classes: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * 8 * 8, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, 3 * 8 * 8, generator=g))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])


def test_registry_has_the_tutorial_attack_and_torchattacks_by_class_name():
    assert {"sgd", "fgsm", "pgd", "bim", "mifgsm", "cw"} <= set(names())
    assert lookup("PGD") is lookup("pgd")
    assert lookup("sgd").cls is SGD and lookup("sgd").targeted
    with pytest.raises(KeyError):
        lookup("teleport")


def test_wrong_arguments_are_rejected_before_any_model_loads():
    with pytest.raises(ValueError):
        check(AttackSpec("s", "sgd", 8 / 255, params=(("steps", 0),)))


@pytest.mark.parametrize("eps", [2 / 255, 10 / 255])
def test_sgd_stays_in_the_eps_ball_and_the_image_range(batch, eps):
    x, y = batch
    adv = SGD(Linear(), eps=eps, steps=10, lr=0.5)(x, y)
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_targeted_sgd_moves_images_to_the_target_class(batch):
    x, y = batch
    model = Linear()
    attack = build(AttackSpec("s", "sgd", 0.5, params=(("lr", 0.01), ("steps", 30)), target=1), model)
    adv = attack(x, y)
    with torch.no_grad():
        before = nn.functional.cross_entropy(model(x), torch.ones_like(y))
        after = nn.functional.cross_entropy(model(adv), torch.ones_like(y))
    assert after < before
    assert (model(adv).argmax(1) == 1).all()


def test_untargeted_sgd_raises_the_loss_of_the_true_label(batch):
    x, y = batch
    model = Linear()
    adv = SGD(model, eps=0.1, steps=5, lr=0.01)(x, y)
    with torch.no_grad():
        assert nn.functional.cross_entropy(model(adv), y) > nn.functional.cross_entropy(model(x), y)


def test_sgd_result_for_an_image_does_not_depend_on_its_batch(batch):
    x, y = batch
    model = Linear()
    together = SGD(model, eps=0.05, steps=5, lr=0.01)(x, y)
    alone = SGD(model, eps=0.05, steps=5, lr=0.01)(x[:1], y[:1])
    assert torch.allclose(together[:1], alone, atol=1e-6)


def test_sgd_leaves_model_weights_untouched_and_without_gradients(batch):
    x, y = batch
    model = Linear()
    w = model.fc.weight.clone()
    SGD(model, eps=0.05, steps=3)(x, y)
    assert torch.equal(model.fc.weight, w) and model.fc.weight.grad is None


def test_build_passes_eps_and_params_to_torchattacks(batch):
    attack = build(AttackSpec("p", "pgd", 4 / 255, params=(("alpha", 1 / 255), ("steps", 2))), Linear())
    assert (attack.eps, attack.alpha, attack.steps) == (4 / 255, 1 / 255, 2)
    x, y = batch
    assert ((attack(x, y) - x).abs().max() <= 4 / 255 + 1e-6)


def test_a_target_makes_a_torchattacks_attack_targeted(batch):
    x, y = batch
    attack = build(AttackSpec("f", "fgsm", 0.3, target=2), Linear())
    assert attack.targeted and attack.get_target_label(x, y).tolist() == [2] * 6


# ---------------------------------------------------------------------------------------------
# Every attack in the registry, through the runner with every CPU lever on


class TinyNet(nn.Module):
    """Conv → BatchNorm → ReLU → pool → linear at 16 px: BatchNorm folding and channels_last both
    apply, and one attack step costs microseconds, so every attack's defaults fit in a test."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 4), 1))


# Defaults kept except where one attack alone would take minutes (EAD: 9 binary searches × 100 steps).
_CHEAPER = {"eadl1": {"binary_search_steps": 2, "max_iterations": 10}, "eaden": {"binary_search_steps": 2, "max_iterations": 10}}


def _args(name: str) -> dict:
    from bench.attacks import budget_norm

    args = dict(_CHEAPER.get(name, {}))
    if "eps" in lookup(name).params:
        args["eps"] = 0.5 if budget_norm(lookup(name), {}) == "L2" else "8/255"
    return args


@pytest.fixture(scope="module")
def every_attack(tmp_path_factory):
    """One run of a suite holding every registered attack at its defaults (10 classes, so the
    attacks that target the other classes have some)."""
    import pandas as pd
    import yaml

    from bench import models
    from bench.models import ArchInfo
    from bench.runner import run_suite
    from bench.suite import load_suite
    from tests.conftest import write_images

    tmp = tmp_path_factory.mktemp("every_attack")
    images = write_images(tmp / "imgs", {"a": 1, "b": 1}, size=16)
    doc = {"name": "every-attack", "seed": 0, "data": {"source": "imagefolder", "path": str(images), "image_size": 16},
           "models": [{"name": "tiny", "arch": "tiny", "num_classes": 10}],
           "attacks": [{"name": n, "type": n, **_args(n)} for n in names()], "defenses": ["none"], "batch_size": 2}
    (tmp / "suite.yaml").write_text(yaml.safe_dump(doc))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(models.ARCHS, "tiny", ArchInfo(lambda spec: TinyNet(spec.num_classes), (None,), 10, (0.5,) * 3, (0.25,) * 3))
        result = run_suite(load_suite(tmp / "suite.yaml"), tmp / "results", tmp / "reports")  # must not raise
    return pd.read_parquet(result.run_dir / "results.parquet").set_index("attack")


@pytest.mark.parametrize("name", names())
def test_every_registered_attack_gives_a_row_that_is_ok_or_failed_with_a_reason(every_attack, name):
    row = every_attack.loc[name]
    assert row["status"] in ("ok", "failed")
    if row["status"] == "failed":
        assert row["reason"] and ":" in row["reason"], row["reason"]  # "ExceptionType: message"
    else:
        assert row["n"] == 2 and 0 <= row["robust_acc"] <= 1


def test_most_attacks_run_ok_on_the_fast_path(every_attack):
    """channels_last and BatchNorm folding must not break attacks (PGDL2 did: it views the gradient)."""
    assert every_attack.loc["pgdl2", "status"] == "ok", every_attack.loc["pgdl2", "reason"]
    failed = every_attack[every_attack["status"] == "failed"]
    assert len(failed) <= 3, failed["reason"].to_dict()


# --- reproducible to the bit ------------------------------------------------------------------------


def _default_spec(name: str) -> AttackSpec:
    """The attack with its defaults, as a suite entry without arguments would give it."""
    from bench.attacks import budget_norm
    from bench.attacks.torchattacks_attacks import registry

    info = registry()[name]
    params = tuple(sorted((k, v) for k, v in info.params.items() if k != "eps"))
    eps = None
    if "eps" in info.params:
        eps = 8 / 255 if budget_norm(info, dict(params)) == "Linf" else 0.5
    return AttackSpec(name, name, eps, params)


class Conv(nn.Module):
    """A small conv net with 10 classes (AutoAttack and Square's defaults assume 10)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 3)  # sensitive: attacks win fast, and stop

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("autoattack", "square") else n
                                  for n in names()])  # the two slowest in make test-slow
def test_every_registered_attack_gives_the_same_images_twice_under_the_harness_seed(name):
    from bench.seeding import seeded

    model = Conv().eval()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    outs = []
    for _ in range(2):
        torch.rand(7)  # global generators moved between the two runs: the attack must not care
        with seeded(1234):
            outs.append(build(_default_spec(name), model, seed=1234)(x, y))
    assert torch.equal(outs[0], outs[1]), name


def test_an_attack_that_takes_a_seed_gets_the_crafting_seed_unless_the_suite_pins_one():
    from bench.attacks.torchattacks_attacks import registry

    assert registry()["autoattack"].params["seed"] is None  # left open: the harness fills it in
    spec = _default_spec("square")
    assert build(spec, Conv(), seed=77).seed == 77
    pinned = AttackSpec("square", "square", spec.eps, tuple((k, 5 if k == "seed" else v) for k, v in spec.params))
    assert build(pinned, Conv(), seed=77).seed == 5


def test_seeding_an_attack_leaves_the_global_generators_as_they_were():
    import random

    import numpy as np

    from bench.seeding import seeded

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = torch.rand(2), np.random.rand(2), random.random()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    with seeded(99):
        torch.rand(5), np.random.rand(5), random.random()
    after = torch.rand(2), np.random.rand(2), random.random()
    assert torch.equal(after[0], expected[0]) and (after[1] == expected[1]).all() and after[2] == expected[2]


def test_the_unbounded_attack_keeps_its_step_relative_to_its_budget_and_starts_at_the_image():
    from bench.attacks import unbounded

    pgd = AttackSpec("pgd", "pgd", 8 / 255, (("alpha", 2 / 255), ("random_start", True), ("steps", 10)))
    big = unbounded(pgd, (3, 16, 16))
    assert big.eps == 1.0 and dict(big.params) == {"alpha": pytest.approx(0.25), "random_start": False, "steps": 10}
    l2 = unbounded(AttackSpec("pgdl2", "pgdl2", 0.5, (("alpha", 0.1), ("steps", 10))), (3, 16, 16))
    assert l2.eps == pytest.approx(768 ** 0.5) and dict(l2.params)["alpha"] == pytest.approx(0.1 * 768 ** 0.5 / 0.5)


class _Calls:
    """An attack stand-in: records the batch sizes it is called with and fools images in the order given."""

    def __init__(self, model, fool_on_call: list[set[int]]):
        self.model, self.plan, self.sizes, self.seen = model, fool_on_call, [], []

    def __call__(self, images, labels):
        call = len(self.sizes)
        self.sizes.append(len(images))
        ids = images[:, 0, 0, 0].round().long().tolist()  # each test image carries its id in one pixel
        self.seen.append(ids)
        adv = images.clone()
        for row, i in enumerate(ids):
            if i in self.plan[call]:
                adv[row, 1] = 1.0  # channel 1 set to ones: the model below then predicts class 1
        return adv


class _Channel(nn.Module):
    def forward(self, x):
        return torch.stack([x[:, 1].mean((1, 2)) * 0, (x[:, 1] == 1).all(2).all(1).float()], 1)


def test_restarts_attack_only_the_images_still_standing_and_keep_the_first_adversarial_found():
    from bench.attacks import Restarts

    images = torch.zeros(4, 3, 2, 2)
    images[:, 0, 0, 0] = torch.arange(4).float()
    labels = torch.zeros(4, dtype=torch.long)  # class 0 right; class 1 is fooled
    attack = _Calls(_Channel(), [{1}, {3}, {0, 2}])
    adv = Restarts(attack, _Channel(), 3, target=None)(images, labels)
    assert attack.sizes == [4, 3, 2] and attack.seen == [[0, 1, 2, 3], [0, 2, 3], [0, 2]]
    assert (_Channel()(adv).argmax(1) == 1).all()
    # no run when every image already fell
    attack = _Calls(_Channel(), [{0, 1, 2, 3}, set(), set()])
    Restarts(attack, _Channel(), 3, target=None)(images, labels)
    assert attack.sizes == [4]


def test_restarts_is_a_suite_key_of_any_attack_and_part_of_its_identity(write_suite, tiny_suite):
    from bench.suite import SuiteError, load_suite

    tiny_suite["attacks"] = [{"name": "pgd", "type": "pgd", "eps": "8/255", "steps": 2, "restarts": 3},
                             {"name": "pgd1", "type": "pgd", "eps": "8/255", "steps": 2, "restarts": 1},
                             {"name": "plain", "type": "pgd", "eps": "8/255", "steps": 2}]
    suite = load_suite(write_suite(tiny_suite))
    specs = [v[0] for v in suite.attacks]
    assert specs[0].kwargs["restarts"] == 3 and "restarts" not in specs[1].kwargs  # 1 is the default: left out
    assert specs[1].digest == specs[2].digest != specs[0].digest
    from bench.attacks import Restarts

    assert isinstance(build(specs[0], Linear()), Restarts) and not isinstance(build(specs[1], Linear()), Restarts)
    tiny_suite["attacks"][0]["restarts"] = 0
    with pytest.raises(SuiteError, match=r":\d+: attacks\[0\]\.restarts: must be .*1.*got 0"):
        load_suite(write_suite(tiny_suite))


def test_restarts_give_an_attack_that_reseeds_itself_a_new_seed_per_run_and_restore_it():
    from bench.attacks import Restarts

    class Seeded:
        seed = 7

        def __init__(self):
            self.seeds = []

        def __call__(self, images, labels):
            self.seeds.append(self.seed)
            return images.clone()  # never fools: every run happens

    images, labels = torch.zeros(2, 3, 2, 2), torch.zeros(2, dtype=torch.long)
    attack = Seeded()
    Restarts(attack, _Channel(), 3, target=None)(images, labels)
    assert attack.seeds == [7, 8, 9] and attack.seed == 7


def test_restarts_need_a_random_start_and_the_unbounded_check_runs_once(write_suite, tiny_suite):
    from bench.attacks import RESTARTS, unbounded
    from bench.suite import SuiteError, load_suite

    for attack in ({"type": "fgsm", "eps": "8/255", "restarts": 2},
                   {"type": "pgd", "eps": "8/255", "random_start": False, "restarts": 2}):
        tiny_suite["attacks"] = [attack]
        with pytest.raises(SuiteError, match=r"attacks\[0\]\.restarts: .* has no random start here"):
            load_suite(write_suite(tiny_suite))
    tiny_suite["attacks"] = [{"type": "pgd", "eps": "8/255", "restarts": 2}, {"type": "square", "eps": "8/255", "restarts": 2}]
    suite = load_suite(write_suite(tiny_suite))  # a random start, or a seed that each restart changes
    assert RESTARTS not in unbounded(suite.attacks[0][0], (3, 8, 8)).kwargs
