"""Property: on arbitrary YAML documents the suite loader raises only its own SuiteError."""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.suite import SuiteError, load_suite

KEYS = ["name", "seed", "data", "models", "attacks", "defenses", "devices", "precisions", "batch_size", "include",
        "exclude", "eval_mode", "adaptive_method", "compile", "source", "path", "limit", "image_size", "arch",
        "weights", "checkpoint", "num_classes", "input_size", "type", "eps", "steps", "alpha", "lr", "momentum",
        "target", "quality", "model", "attack", "defense", "device", "precision", "c", "kappa", "random_start"]
WORDS = ["samples", "manifest", "imagefolder", "digits", "small_cnn", "split", "restarts", "resnet18", "efficientnet_lite0", "custom_cnn", "imagenet", "fgsm",
         "pgd", "sgd", "cw", "jpeg", "none", "cpu", "cuda", "fp32", "bf16", "fp16", "oblivious", "adaptive", "both",
         "8/255", "10/0", "1/0.0", "-1/255", "nan", "inf", ".", "..", "/etc/passwd", ""]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS), st.text(string.printable, max_size=12),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), scalars), children, max_size=6),
    ),
    max_leaves=30,
)
# a valid skeleton with one part replaced by noise reaches the deeper checks
skeletons = st.fixed_dictionaries(
    {"name": st.sampled_from(["s", "ok-name"]), "data": st.just({"source": "samples", "limit": 1, "image_size": 32}),
     "models": st.one_of(documents, st.just([{"arch": "custom_cnn", "num_classes": 1000}])),
     "attacks": st.one_of(documents, st.lists(st.dictionaries(st.sampled_from(KEYS), scalars, max_size=5), max_size=3))},
    optional={"defenses": documents, "include": documents, "eval_mode": documents, "precisions": documents},
)


def _check(tmp_path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_suite(path)
    except SuiteError as exc:  # one line per problem (SuiteErrors: several), each naming the file
        lines = str(exc).split("\n")
        assert all(line.startswith(str(path)) for line in lines) and len(lines) == len(getattr(exc, "errors", [exc])), lines


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=documents)
def test_arbitrary_documents_raise_only_suite_errors(tmp_path, doc):
    _check(tmp_path, yaml.safe_dump(doc))


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=skeletons)
def test_nearly_valid_suites_raise_only_suite_errors(tmp_path, doc):
    _check(tmp_path, yaml.safe_dump(doc))


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_arbitrary_text_raises_only_suite_errors(tmp_path, text):
    _check(tmp_path, text)
