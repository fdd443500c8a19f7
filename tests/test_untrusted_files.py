"""Files a user treats as data are opened without running code (bench/untrusted.py).

Specification: each test is the attack. A file holds a payload that writes a marker file when it runs
(a pickle whose ``__reduce__`` calls ``Path.touch``, or program text that Python would evaluate);
after bench opens the file the marker does not exist, and bench says so in one line naming the file.
Files in the normal format keep loading; ``trust: true`` on an exported program is the one way to
load one as torch does — and then the payload runs, which shows the tests can fail.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import urllib.error
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from bench import untrusted
from bench.data import DataError, load_dataset
from bench.models import CheckpointError, torchvision_state_dict
from bench.sources import create_model
from bench.sources import exported as exported_source
from bench.specs import DataSpec, ModelSpec, Preprocess
from bench.suite import SuiteError, load_suite
from tests.conftest import write_images

SIZE, CLASSES = 32, 2
BENCH = Path(sys.executable).with_name("bench")


class Payload:
    """Unpickling this runs ``Path(marker).touch()``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def torch_pickle(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def one_line(message: str, *names: str | Path) -> str:
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, (name, message)
    return message


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


# ---------------------------------------------------------------------------------------------
# Exported programs (.pt2)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    """A normal export of a tiny network, with its card (mean/std)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    ep = torch.export.export(Tiny().eval(), (torch.rand(2, 3, SIZE, SIZE),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, str(path))
    return path


def doctored(program: Path, dst: Path, change: dict[str, object] | None = None, add: dict[str, bytes] | None = None) -> Path:
    """A copy of the archive with entries (named below its top folder) replaced, removed (None) or
    added; a callable value maps the old bytes to the new."""
    change, add = change or {}, add or {}
    with zipfile.ZipFile(program) as src, zipfile.ZipFile(dst, "w") as out:
        top = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            rel = info.filename[len(top) + 1:]
            data = src.read(info)
            if rel in change:
                data = change[rel](data) if callable(change[rel]) else change[rel]
            if data is not None:
                out.writestr(info.filename, data)
        for rel, data in add.items():
            out.writestr(f"{top}/{rel}", data)
    dst.with_suffix(".json").write_text(json.dumps({"mean": [0.5] * 3, "std": [0.25] * 3}))
    return dst


def edit_json(fn):
    def change(data: bytes) -> bytes:
        doc = json.loads(data)
        fn(doc)
        return json.dumps(doc).encode()
    return change


def walk_strings(doc, key: str, fn) -> None:
    """Replace, in place, every string under ``key`` with ``fn(string)``."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == key and isinstance(v, str):
                doc[k] = fn(v)
            else:
                walk_strings(v, key, fn)
    elif isinstance(doc, list):
        for v in doc:
            walk_strings(v, key, fn)


def sample_inputs(program: Path, tmp: Path, marker: Path) -> Path:
    return doctored(program, tmp / "samples.pt2", {"data/sample_inputs/model.pt": torch_pickle({"x": Payload(marker)})})


def pickled_weight(program: Path, tmp: Path, marker: Path) -> Path:
    def use_pickle(doc):
        doc["config"]["conv.weight"]["use_pickle"] = True

    name = "weight_0"
    with zipfile.ZipFile(program) as z:
        config = json.loads(z.read(next(n for n in z.namelist() if n.endswith("model_weights_config.json"))))
        name = config["config"]["conv.weight"]["path_name"]
    return doctored(program, tmp / "weights.pt2", {"data/weights/model_weights_config.json": edit_json(use_pickle),
                                                   f"data/weights/{name}": torch_pickle(Payload(marker))})


def object_constant(kind: str):
    def make(program: Path, tmp: Path, marker: Path) -> Path:
        def constant(doc):
            doc["config"]["obj"] = {"path_name": f"{kind}_0", "is_param": False, "use_pickle": True, "tensor_meta": None}

        return doctored(program, tmp / f"{kind}.pt2", {"data/constants/model_constants_config.json": edit_json(constant)},
                        add={f"data/constants/{kind}_0": pickle.dumps(Payload(marker))})
    return make


def shape_expression(program: Path, tmp: Path, marker: Path) -> Path:
    """torch.export.load hands each symbolic shape expression to sympy.sympify, i.e. to eval."""
    index = [c.__name__ for c in object.__subclasses__()].index("_wrap_close")  # os._wrap_close: its globals hold os.system
    code = f"().__class__.__base__.__subclasses__()[{index}].__init__.__globals__['system']('touch {marker}')"
    return doctored(program, tmp / "sympy.pt2", {"models/model.json": edit_json(lambda d: walk_strings(d, "expr_str", lambda s: code))})


def input_name(program: Path, tmp: Path, marker: Path) -> Path:
    """The input's name becomes a placeholder, written as it is into the graph module's Python code."""
    code = f"x=__import__('pathlib').Path({str(marker)!r}).touch()"
    return doctored(program, tmp / "name.pt2", {"models/model.json": lambda data: data.replace(b'"x"', json.dumps(code).encode())})


# Each payload runs with a plain torch.export.load (torch 2.14) but the custom object's: torch's own
# unpickler reads it, and a custom (TorchBind) object is refused as a kind, whatever it holds.
ATTACKS = {"sample_inputs": sample_inputs, "use_pickle weight": pickled_weight, "opaque object": object_constant("opaque_obj"),
           "custom object": object_constant("custom_obj"), "shape expression": shape_expression, "input name": input_name}
ENTRIES = {"sample_inputs": "model/data/sample_inputs/model.pt", "use_pickle weight": "model/data/weights/weight_",
           "opaque object": "model/data/constants/opaque_obj_0", "custom object": "model/data/constants/custom_obj_0",
           "shape expression": "model/models/model.json", "input name": "model/models/model.json"}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_images(tmp_path / "imgs", {"a": 2, "b": 2}, size=40)


def suite_file(tmp: Path, data: Path, model: Path, **entry) -> Path:
    doc = {"name": "untrusted", "data": {"source": "imagefolder", "path": str(data), "image_size": SIZE},
           "models": [{"name": "exported", "file": model.name, **entry}],
           "attacks": [{"name": "fgsm", "type": "fgsm", "eps": "2/255"}], "devices": ["cpu"], "precisions": ["fp32"]}
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def suite_error(path: Path) -> str:
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    return str(info.value)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_program_whose_loading_runs_code_is_refused_at_suite_load(attack, program, data, tmp_path, marker):
    evil = ATTACKS[attack](program, tmp_path, marker)
    message = one_line(suite_error(suite_file(tmp_path, data, evil)), "models[0].file", evil.resolve(), ENTRIES[attack])
    assert "would run code when loaded" in message and "trust: true" in message
    assert not marker.exists()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_guard_stops_what_the_scan_did_not_foresee(attack, program, tmp_path, marker, monkeypatch):
    """Defence in depth: with the archive scan switched off, loading is still refused, in one line."""
    evil = ATTACKS[attack](program, tmp_path, marker)
    monkeypatch.setattr(untrusted, "scan_exported_program", lambda path, data: {})
    with pytest.raises(untrusted.UnsafeFile) as info:
        exported_source.load_program(evil)
    one_line(str(info.value), evil, "would run code when loaded")
    assert not marker.exists()
    import sympy  # the guard put everything back

    assert (pickle.loads.__module__, torch.load.__module__, sympy.sympify.__module__) == ("_pickle", "torch.serialization", "sympy.core.sympify")
    assert torch.fx.Graph.create_node.__qualname__ == "Graph.create_node"


@pytest.mark.parametrize("text", ["Symbol('s77', positive=True, integer=True)",
                                  "FloorDiv(Symbol('s77', positive=True, integer=True), Integer(2))",
                                  "Mul(Float('1.5', precision=53), Symbol('s0'))", "Eq(Mod(Symbol('s0'), Integer(4)), Integer(0))",
                                  "Max(Integer(3), Symbol('u0'))", "-oo", "2*s0 + 1 <= s1"])
def test_plain_shape_expressions_pass(text):
    assert untrusted.sympy_problem(text) is None


@pytest.mark.parametrize("text", ["().__class__", "eval(chr(95))", "Symbol('__import__')", "Max('exec')",
                                  "Integer(1)(2)", "Symbol('s0')[0]", "lambda: 0", "x := 1", "S('os')"])
def test_shape_expressions_that_could_run_code_are_refused(text):
    assert untrusted.sympy_problem(text)


@pytest.mark.parametrize("text", ["2**2**2**2**40", "Pow(10, 10**12)", "s0**(10**12)", "PowByNatural(2, 10**9)",
                                  "LShift(1, 10**9)", "s0**s1", "1" * 25])
def test_shape_expressions_that_would_never_finish_evaluating_are_refused(text):
    """A tower of powers is a few characters and more digits than the machine has memory: the load would hang."""
    assert untrusted.sympy_problem(text)


def test_small_powers_and_int64_bounds_still_pass():
    assert untrusted.sympy_problem("s0**2 + 9223372036854775807") is None


def test_the_pre_2_8_layout_is_scanned_too(program, tmp_path, marker):
    path = tmp_path / "legacy.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("version", "8.0")
        z.writestr("serialized_exported_program.json", "{}")
        z.writestr("serialized_state_dict.pt", torch_pickle({}))
        z.writestr("serialized_example_inputs.pt", torch_pickle((Payload(marker),)))
    with pytest.raises(untrusted.UnsafeFile) as info:
        exported_source.load_program(path)
    one_line(str(info.value), path, "(serialized_example_inputs.pt)")
    assert not marker.exists()


def test_an_aotinductor_library_is_never_loaded(program, tmp_path):
    evil = doctored(program, tmp_path / "aoti.pt2", add={"data/aotinductor/model/model.so": b"\x7fELF"})
    with pytest.raises(untrusted.UnsafeFile) as info:
        exported_source.load_program(evil)
    one_line(str(info.value), evil, "model/data/aotinductor/model/model.so", "compiled code")


def test_a_normal_export_loads_and_builds(program, data, tmp_path):
    model = doctored(program, tmp_path / "plain.pt2")
    suite = load_suite(suite_file(tmp_path, data, model))
    (spec,) = suite.models
    assert spec.kwargs == ()  # untrusted: nothing added to the spec
    net = create_model(spec)
    assert net(torch.rand(3, 3, SIZE, SIZE)).shape == (3, CLASSES)


def test_trust_true_loads_with_torch_and_runs_the_payload(program, data, tmp_path, marker):
    plain = doctored(program, tmp_path / "plain.pt2")
    (spec,) = load_suite(suite_file(tmp_path, data, plain, trust=True)).models
    assert spec.kwargs == (("trust", True),)  # build() in a worker reads it from the spec
    assert create_model(spec)(torch.rand(1, 3, SIZE, SIZE)).shape == (1, CLASSES)

    evil = sample_inputs(program, tmp_path, marker)
    try:
        load_suite(suite_file(tmp_path, data, evil, trust=True))
    except SuiteError:
        pass  # torch ran the payload, then found its sample inputs odd: what matters is that it ran
    assert marker.exists()  # the attack is real: only trust: true lets it run
    marker.unlink()


def test_trust_must_be_a_boolean(program, data, tmp_path):
    message = suite_error(suite_file(tmp_path, data, doctored(program, tmp_path / "plain.pt2"), trust="yes"))
    assert "models[0].trust: must be true or false" in one_line(message)


def test_build_refuses_a_file_changed_after_the_suite_was_checked(program, tmp_path, marker):
    evil = sample_inputs(program, tmp_path, marker)
    spec = ModelSpec("m", str(evil), None, num_classes=CLASSES, input_size=SIZE, source="file", mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(CheckpointError) as info:  # the harness fails the model's cells with this line
        create_model(spec)
    one_line(str(info.value), evil, "model/data/sample_inputs/model.pt")
    assert not marker.exists()


def test_bench_run_dry_run_refuses_it(program, data, tmp_path, marker):
    evil = sample_inputs(program, tmp_path, marker)
    suite = suite_file(tmp_path, data, evil)
    done = subprocess.run([str(BENCH), "run", str(suite), "--dry-run"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    one_line(errors[0], evil.resolve(), "model/data/sample_inputs/model.pt", "would run code when loaded")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# torchvision weights in the torch hub cache


RESNET18 = "resnet18-f37072fd.pth"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return folder


def resnet18_spec() -> ModelSpec:
    return ModelSpec("r18", "resnet18", "imagenet", num_classes=1000, input_size=64)


def test_a_pickle_in_the_hub_cache_never_runs(hub, marker):
    (hub / RESNET18).write_bytes(torch_pickle({"fc.weight": Payload(marker)}))
    with pytest.raises(CheckpointError) as info:
        create_model(resnet18_spec())
    one_line(str(info.value), hub / RESNET18, "f37072fd")
    assert not marker.exists()


def test_a_cached_file_whose_hash_does_not_match_its_name_is_refused(hub):
    from torchvision.models import resnet18

    (hub / RESNET18).write_bytes(torch_pickle(resnet18().state_dict()))
    with pytest.raises(CheckpointError) as info:
        create_model(resnet18_spec())
    message = one_line(str(info.value), hub / RESNET18, "f37072fd")
    assert f"SHA-256 begins {untrusted.sha256(hub / RESNET18)[:8]}" in message


def named_by_hash(folder: Path, data: bytes) -> SimpleNamespace:
    """Weights saved where a torchvision enum would find them, its URL naming their true hash."""
    prefix = hashlib.sha256(data).hexdigest()[:8]
    (folder / f"tiny-{prefix}.pth").write_bytes(data)
    return SimpleNamespace(url=f"https://download.pytorch.org/models/tiny-{prefix}.pth")


def test_a_cached_file_with_the_right_hash_loads(hub):
    state = Tiny().state_dict()
    weights = named_by_hash(hub, torch_pickle(state))
    loaded = torchvision_state_dict(weights, "tiny")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_a_right_hash_does_not_make_a_pickle_safe(hub, marker):
    weights = named_by_hash(hub, torch_pickle({"w": Payload(marker)}))
    with pytest.raises(CheckpointError) as info:
        torchvision_state_dict(weights, "tiny")
    one_line(str(info.value), hub / Path(weights.url).name, "weights_only=True")
    assert not marker.exists()


def test_absent_weights_say_where_to_put_them(hub):
    from bench.models import ModelUnavailable

    with pytest.raises(ModelUnavailable) as info:
        create_model(resnet18_spec())
    one_line(str(info.value), f"put https://download.pytorch.org/models/{RESNET18} at {hub / RESNET18}")


# ---------------------------------------------------------------------------------------------
# timm weights in the Hugging Face cache


TIMM = "test_resnet.r160_in1k"


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch) -> Path:
    pytest.importorskip("timm")
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_weights(cache: Path, data: bytes, blob: str | None = None) -> Path:
    """pytorch_model.bin as huggingface_hub leaves it: a snapshot file, or a link to blobs/<blob>."""
    repo = cache / f"models--timm--{TIMM}"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    path = snapshot / "pytorch_model.bin"
    if blob is None:
        path.write_bytes(data)
    else:
        (repo / "blobs").mkdir()
        (repo / "blobs" / blob).write_bytes(data)
        path.symlink_to(Path("..") / ".." / "blobs" / blob)
    return path


def timm_spec() -> ModelSpec:
    return ModelSpec("t", "test_resnet", "r160_in1k", num_classes=1000, input_size=160, source="timm",
                     mean=(0.5,) * 3, std=(0.5,) * 3)


def test_a_pickle_in_the_hugging_face_cache_never_runs(hf_cache, marker):
    path = cache_weights(hf_cache, torch_pickle({"stem.conv.weight": Payload(marker)}))
    with pytest.raises(CheckpointError) as info:
        create_model(timm_spec())
    one_line(str(info.value), path, "weights_only=True")
    assert not marker.exists()


def test_an_lfs_blob_whose_content_is_not_its_hash_is_refused(hf_cache):
    import timm

    data = torch_pickle(timm.create_model("test_resnet", pretrained=False).state_dict())
    cache_weights(hf_cache, data, blob="0" * 64)
    with pytest.raises(CheckpointError) as info:
        create_model(timm_spec())
    one_line(str(info.value), "0" * 64, "SHA-256 begins")


def test_timm_weights_from_the_cache_load_as_data(hf_cache):
    import timm

    torch.manual_seed(1)
    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    data = torch_pickle(state)
    cache_weights(hf_cache, data, blob=hashlib.sha256(data).hexdigest())
    net = create_model(timm_spec()).net
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


# ---------------------------------------------------------------------------------------------
# CIFAR-format folders


def cifar(root: Path, name: str, marker: Path, evil: str | None, protocol: int = pickle.DEFAULT_PROTOCOL,
          byte_keys: bool = False) -> Path:
    folder = root / ("cifar-10-batches-py" if name == "CIFAR10" else "cifar-100-python")
    folder.mkdir(parents=True)
    key = (lambda k: k.encode()) if byte_keys else (lambda k: k)
    x = np.random.default_rng(0).integers(0, 256, (6, 3 * 32 * 32), dtype=np.uint8)
    batch, meta = ("test_batch", "batches.meta") if name == "CIFAR10" else ("test", "meta")
    labels, names = ("labels", "label_names") if name == "CIFAR10" else ("fine_labels", "fine_label_names")
    files = {batch: {key("data"): x, key(labels): [0, 1, 2, 0, 1, 2]}, meta: {key(names): [f"c{i}" for i in range(10)]}}
    for file, content in files.items():
        (folder / file).write_bytes(pickle.dumps({**content, "x": Payload(marker)} if file == evil else content, protocol=protocol))
    return folder


def cifar_spec(root: Path, name: str) -> DataSpec:
    return DataSpec("torchvision", path=str(root), name=name, split="test", image_size=32)


@pytest.mark.parametrize("name, evil", [("CIFAR10", "test_batch"), ("CIFAR10", "batches.meta"), ("CIFAR100", "meta"),
                                        ("CIFAR100", "test")])
def test_a_cifar_pickle_that_runs_code_is_refused(name, evil, tmp_path, marker):
    folder = cifar(tmp_path / "root", name, marker, evil)
    with pytest.raises(DataError) as info:
        load_dataset(cifar_spec(tmp_path / "root", name), Preprocess(32))
    message = one_line(str(info.value), folder / evil)
    assert "not a CIFAR batch: it asks to load pathlib.Path.touch" in message  # Path.touch pickles as Path.touch
    assert "bench opens data without running code" in message and info.value.key == "root"
    assert not marker.exists()


def test_a_cifar_suite_names_the_file(tmp_path, marker, write_suite):
    folder = cifar(tmp_path / "root", "CIFAR10", marker, "test_batch")
    suite = write_suite({"name": "c", "data": {"source": "torchvision", "name": "CIFAR10", "root": str(tmp_path / "root")},
                         "models": [{"name": "m", "arch": "small_cnn"}], "attacks": [{"name": "f", "type": "fgsm", "eps": "2/255"}],
                         "devices": ["cpu"], "precisions": ["fp32"]})
    message = one_line(suite_error(suite), folder / "test_batch")
    assert "data.root: " in message
    assert not marker.exists()


@pytest.mark.parametrize("protocol, byte_keys", [(2, False), (2, True), (5, False)])
def test_cifar_files_in_every_pickle_protocol_still_load(protocol, byte_keys, tmp_path, marker):
    cifar(tmp_path / "root", "CIFAR10", marker, None, protocol=protocol, byte_keys=byte_keys)
    ds = load_dataset(cifar_spec(tmp_path / "root", "CIFAR10"), Preprocess(32))
    assert len(ds) == 6 and ds.class_names[:2] == ["c0", "c1"]


def test_the_data_unpickler_admits_numpy_arrays_only(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(pickle.dumps({"a": np.arange(3), "b": [1, "x", b"y", 2.5]}))
    assert untrusted.load_data_pickle(path, "a test file")["b"] == [1, "x", b"y", 2.5]
    path.write_bytes(pickle.dumps(np.float64(1.5)))  # a numpy scalar: not in a CIFAR file
    with pytest.raises(untrusted.UnsafeFile, match="it asks to load numpy"):
        untrusted.load_data_pickle(path, "a test file")


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_a_checkpoint_that_runs_code_never_runs_at_suite_load_or_in_a_run(tmp_path, data, marker, capsys):
    """A `checkpoint:` beside its card, as `bench train` leaves one, but doctored: --dry-run (which does not
    open checkpoints) and a run leave no marker; the run's cells fail with one line naming the file."""
    from bench.cli import main

    state = {"weight": Payload(marker)}
    (tmp_path / "evil.pt").write_bytes(torch_pickle(state))
    (tmp_path / "evil.json").write_text(json.dumps({"arch": "small_cnn", "num_classes": CLASSES, "mean": [0.5] * 3,
                                                    "std": [0.5] * 3, "input_size": SIZE}))
    doc = {"name": "ckpt", "data": {"source": "imagefolder", "path": str(data), "image_size": SIZE},
           "models": [{"name": "m", "checkpoint": "evil.pt"}], "attacks": [{"name": "f", "type": "fgsm", "eps": "2/255"}],
           "devices": ["cpu"], "precisions": ["fp32"]}
    suite = tmp_path / "ckpt.yaml"
    suite.write_text(yaml.safe_dump(doc))
    code = main(["run", str(suite), "--dry-run"])
    code_run = main(["run", str(suite), "--no-progress", "--results-dir", str(tmp_path / "results"),
                     "--reports-dir", str(tmp_path / "reports")])
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 0 and code_run == 1 and "Traceback" not in err and "\x1b" not in err
    assert f"{tmp_path / 'evil.pt'}: cannot be loaded safely as a state dict (Weights only load failed" in " ".join(err.split())


# ---------------------------------------------------------------------------------------------
# Operators with effects outside the tensors: no pickle, no text torch evaluates, yet the graph itself writes a
# file when validation runs it forward (torchvision's image::write_file; aten::from_file maps a file shared)


class WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, CLASSES)
        self.register_buffer("payload", torch.tensor(list(b"payload"), dtype=torch.uint8))

    def forward(self, x):
        return self.fc(x.mean((2, 3))) + torch.zeros(4, dtype=torch.uint8).float().sum() * 0 + self.payload.float().sum() * 0


def _rewrite_node(program: Path, out: Path, edit) -> Path:
    """The program with one node of its serialized graph rewritten by ``edit(node, graph)`` (which returns True once done)."""
    zin, zout = zipfile.ZipFile(program), zipfile.ZipFile(out, "w")
    for info in zin.infolist():
        body = zin.read(info)
        if info.filename.endswith("models/model.json"):
            doc = json.loads(body)
            graph = doc["graph_module"]["graph"]
            assert any(edit(node, graph) for node in graph["nodes"]), "no node to rewrite"
            body = json.dumps(doc).encode()
        zout.writestr(info, body)
    zout.close()
    return out


@pytest.fixture(scope="module")
def with_buffer(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ops") / "buffer.pt2"
    ep = torch.export.export(WithBuffer().eval(), (torch.rand(2, 3, SIZE, SIZE),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, str(path))
    return path


def _write_file(marker: Path):
    def edit(node, graph):
        if "zeros" not in node["target"]:
            return False
        payload = next(i["as_tensor"]["name"] for i in graph["inputs"] if "as_tensor" in i and "payload" in i["as_tensor"]["name"])
        node["target"] = "torch.ops.image.write_file.default"
        node["inputs"] = [{"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1},
                          {"name": "data", "arg": {"as_tensor": {"name": payload}}, "kind": 1}]
        return True
    return edit


def _from_file(marker: Path):
    def edit(node, graph):
        if node["target"] != "torch.ops.aten.zeros.default":
            return False
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [{"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1},
                          {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                          {"name": "size", "arg": {"as_int": 4}, "kind": 1},
                          {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2}]
        return True
    return edit


@pytest.mark.parametrize("edit, op", [(_write_file, "image.write_file"), (_from_file, "aten.from_file")])
def test_a_program_whose_graph_writes_files_is_refused_before_it_runs(edit, op, with_buffer, data, tmp_path, marker):
    pytest.importorskip("torchvision")
    evil = _rewrite_node(with_buffer, tmp_path / "evil.pt2", edit(marker))
    message = one_line(suite_error(suite_file(tmp_path, data, evil)), "models[0].file", evil.resolve())
    assert op in message and not marker.exists()
    with pytest.raises(CheckpointError):  # and a file changed after the suite was checked never builds either
        exported_source.build(ModelSpec("m", str(evil), source="file", input_size=SIZE, num_classes=CLASSES))
    assert not marker.exists()
