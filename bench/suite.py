"""Suite schema, validation and grid expansion.

A suite file is parsed into typed specs and validated completely before anything runs:
every problem becomes a :class:`SuiteError` that names the file, the key path
(``attacks[1].eps[0]``) and what is allowed. ``Suite.cells()`` expands the grid into
:class:`CellSpec` objects, the unit the runner executes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import yaml

from bench import attacks as attack_registry
from bench import data as data_registry
from bench import defenses as defense_registry
from bench import models as model_registry
from bench import sources
from bench.specs import AttackSpec, CellSpec, DataSpec, DefenseSpec, ExecutorSpec, ModelSpec, format_eps  # noqa: F401 (re-exported)

PRECISIONS = ("fp32", "bf16", "fp16")
EVAL_MODES = ("oblivious", "adaptive")
ADAPTIVE_METHODS = (*defense_registry.ADAPTIVE_METHODS, *defense_registry.METHOD_ALIASES, "both")
TOP_KEYS = {
    "name": "suite name (letters, digits, '-', '_', '.')",
    "seed": "integer",
    "data": "mapping",
    "models": "list of mappings",
    "attacks": "list of mappings",
    "defenses": "list",
    "devices": "list of 'cpu', 'cuda' or 'cuda:N'",
    "precisions": f"list of {', '.join(PRECISIONS)}",
    "batch_size": "integer >= 1",
    "compile": "true or false: torch.compile every model (a model's own `compile` wins)",
    "eval_mode": "list of oblivious, adaptive",
    "adaptive_method": "bpda, diff, or a list of them (default: every method that applies to each defense)",
    "eot_samples": "integer >= 1: draws averaged per gradient by adaptive attacks on randomized defenses (default 8)",
    "eval_draws": "integer >= 1: draws of a randomized defense per image for robust_acc_all_draws (default 1)",
    "cascade": "true or false: run each attack only on the images still standing (AutoAttack's cascade; default false)",
    "unconstrained_check": "true or false: the unconstrained-attack indicator's extra crafting per attack (default true)",
    "shard_size": "integer >= 1: images per shard of a cell, rounded up to whole batches; numbers do not "
                  "depend on it, so it is not part of the suite's digest",
    "include": "list of rules",
    "exclude": "list of rules",
    "executor": "local (default) or ray, or a mapping: type, address, workers, cpus_per_worker, max_retries",
}
REQUIRED_TOP = ("name", "data", "models", "attacks")
RULE_KEYS = ("model", "attack", "eps", "defense", "eval_mode", "device", "precision")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # fullmatch: a trailing newline is not a name
_FRACTION_RE = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)\s*/\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)\s*$")
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class SuiteError(ValueError):
    """A suite that cannot run. ``str()`` is the one-line message shown to the user:
    ``FILE[:LINE]: KEY: what is wrong and what is allowed``."""

    def __init__(self, file: str | Path, key: str, message: str, line: int | None = None):
        self.file, self.key, self.message, self.line = str(file), key, message, line
        where = self.file + (f":{line}" if line else "")
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        # one line whatever the YAML held (a key may itself contain a line break)
        super().__init__(text.replace("\r", "\\r").replace("\n", "\\n"))


class SuiteErrors(SuiteError):
    """Several problems of one suite, found in one pass: ``errors`` holds each :class:`SuiteError`; ``str()`` is one
    line per problem (at most :data:`MAX_ERRORS`, then how many more)."""

    def __init__(self, errors: list[SuiteError]):
        self.errors = errors
        first = errors[0]
        super().__init__(first.file, first.key, first.message, first.line)
        shown = [str(e) for e in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            shown.append(f"{first.file}: … and {len(errors) - MAX_ERRORS} more")
        self.args = ("\n".join(shown),)

    def __str__(self) -> str:
        return self.args[0]


MAX_ERRORS = 20


def _key_lines(text: str) -> dict[str, int]:
    """Line (1-based) of every key path in a YAML document, e.g. ``attacks[1].eps[0]`` → 12."""
    lines: dict[str, int] = {}

    def walk(node, path: str) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else "?"
                lines.setdefault(_join(path, str(key)), k.start_mark.line + 1)
                walk(v, _join(path, str(key)))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, f"{path}[{i}]")

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


@dataclass
class Suite:
    name: str
    seed: int
    data: DataSpec
    models: tuple[ModelSpec, ...]
    attacks: tuple[tuple[AttackSpec, ...], ...]  # one tuple of ε-variants per attack entry
    defenses: tuple[DefenseSpec, ...]
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    batch_size: int
    eval_modes: tuple[str, ...] = ("oblivious",)  # concrete: oblivious, adaptive-bpda, adaptive-diff
    eot_samples: int = defense_registry.EOT_SAMPLES
    eval_draws: int = 1
    cascade: bool = False  # each attack only on the images still standing (bench/audit/cascade.py)
    unconstrained_check: bool = True  # the unconstrained-fails indicator's extra crafting (bench/audit/indicators.py)
    shard_size: int | None = None  # images per shard (bench/cells.py shard_plan); None: the default
    include: tuple[dict[str, Any], ...] = ()
    exclude: tuple[dict[str, Any], ...] = ()
    # where cells run, as the suite wrote it: checked where the executor is chosen (bench.executors.from_suite),
    # and not in the digest (any executor gives the same table)
    executor_entry: Any = "local"
    path: str = "<memory>"
    raw: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict, repr=False)  # key path → line in the suite file

    def checker(self) -> "_Validator":
        """The suite file's validator, so a section checked elsewhere (the executor) reports FILE:LINE: KEY."""
        return _Validator(Path(self.path), self.lines)

    def cells(self) -> list[CellSpec]:
        """The pruned grid, ordered so cells sharing a model and an adversarial batch are adjacent."""
        out = []
        applies = {d: defense_registry.methods(d) for d in self.defenses}
        for model in self.models:
            for device in self.devices:
                for precision in self.precisions:
                    for variants in self.attacks:
                        for attack in variants:
                            # modes outside defenses: an oblivious crafting serves all defenses in a row
                            for mode in self.eval_modes:
                                for defense in self.defenses:
                                    if mode != "oblivious" and mode.removeprefix("adaptive-") not in applies[defense]:
                                        continue  # no defense (that is the oblivious cell again), or no such method for it
                                    cell = CellSpec(
                                        suite=self.name,
                                        seed=self.seed,
                                        model=model,
                                        attack=attack,
                                        defense=defense,
                                        device=device,
                                        precision=precision,
                                        batch_size=self.batch_size,
                                        eval_mode=mode,
                                        eot_samples=self.eot_samples,
                                        eval_draws=self.eval_draws,
                                    )
                                    if self._keep(cell):
                                        out.append(cell)
        return out

    def _keep(self, cell: CellSpec) -> bool:
        if self.include and not any(_rule_matches(r, cell) for r in self.include):
            return False
        return not any(_rule_matches(r, cell) for r in self.exclude)

    def digest(self) -> str:
        """Hash of the resolved suite; identical suites give identical digests."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()


def _rule_matches(rule: dict[str, Any], cell: CellSpec) -> bool:
    values = {
        "model": {cell.model.name},
        "attack": {cell.attack.name},
        "defense": {cell.defense.type, cell.defense.label},
        "eval_mode": {cell.eval_mode, cell.eval_mode.split("-")[0]},
        "device": {cell.device},
        "precision": {cell.precision},
    }
    for key, wanted in rule.items():
        if key == "eps":
            if cell.attack.eps is None or not any(math.isclose(cell.attack.eps, w, rel_tol=1e-9) for w in wanted):
                return False
        elif not values[key] & set(wanted):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_suite(path: str | Path) -> Suite:
    """Read, validate and resolve a suite file. Raises :class:`SuiteError` on any problem."""
    doc, lines = read_suite(path)
    return parse_suite(doc, path, lines)


def read_suite(path: str | Path) -> tuple[Any, dict[str, int]]:
    """A suite file's YAML document and the line of every key path (SuiteError if it cannot be read)."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(path, "", "suite file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(path, "", f"cannot read suite file ({exc})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(path, "", f"invalid YAML{where}: {problem}") from None
    return doc, _key_lines(text)


def parse_suite(doc: Any, path: str | Path = "<memory>", lines: dict[str, int] | None = None) -> Suite:
    """Validate a parsed YAML document. Relative paths resolve against the suite file's folder;
    ``lines`` (key path → line) lets errors point at the line."""
    v = _Validator(Path(path), lines or {})
    return v.suite(doc)


class _Validator:
    def __init__(self, path: Path, lines: dict[str, int]):
        self.path = path
        self.lines = lines
        self.base = path.parent if path.name != "<memory>" else Path.cwd()
        self.errors: list[SuiteError] = []  # problems found so far in this pass (see collect)

    def collect(self, check, *args, default=None, **kwargs):
        """``check(*args)``, or ``default`` with its SuiteError kept: a suite's every problem is found in one pass."""
        try:
            return check(*args, **kwargs)
        except SuiteError as exc:
            self.errors.append(exc)
            return default

    def fail(self, key: str, message: str) -> SuiteError:
        # the key's own line, else its nearest parent's (a missing key is reported at its mapping)
        probe = key
        while probe and probe not in self.lines:
            probe = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", probe) if re.search(r"(\.[^.\[]*|\[\d+\])$", probe) else ""
        return SuiteError(self.path, key, message, self.lines.get(probe) if probe else None)

    # -- generic helpers -------------------------------------------------------------------

    def mapping(self, value: Any, key: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {_kind(value)}")
        allowed = list(allowed)
        for k in value:
            if not isinstance(k, str) or k not in allowed:
                raise self.fail(_join(key, str(k)), f"unknown key; allowed: {', '.join(allowed)}")
        for k in required:
            if k not in value:
                raise self.fail(_join(key, k), "is required")
        return value

    def integer(self, value: Any, key: str, lo: int | None = None, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {_kind(value)} {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(key, f"must be {_range_text(lo, hi)}, got {value}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
            raise self.fail(key, f"must be a name of letters, digits, '-', '_' or '.', got {value!r}")
        return value

    def number(self, value: Any, key: str) -> float:
        """A real number, written as a number or a fraction string such as ``10/255``."""
        if isinstance(value, bool):
            raise self.fail(key, f"must be a number or a fraction like 8/255, got {value!r}")
        if isinstance(value, (int, float)):
            x = float(value)
        elif isinstance(value, str) and _FRACTION_RE.match(value):
            num, den = _FRACTION_RE.match(value).groups()
            if float(den) == 0:
                raise self.fail(key, f"division by zero in {value!r}")
            x = float(Fraction(num) / Fraction(den))
        else:
            raise self.fail(key, f"must be a number or a fraction like 8/255, got {_kind(value)} {value!r}")
        if not math.isfinite(x):
            raise self.fail(key, f"must be finite, got {value!r}")
        return x

    def listof(self, value: Any, key: str) -> list:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list, got {_kind(value)}")
        if not value:
            raise self.fail(key, "must not be empty")
        return value

    def existing_path(self, value: Any, key: str, kind: str) -> Path:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a path string, got {_kind(value)}")
        p = Path(value)
        p = p if p.is_absolute() else (self.base / p)
        p = p.resolve()
        if kind == "file" and not p.is_file():
            raise self.fail(key, f"not a regular file (a FIFO, a device …): {p}" if p.exists() else f"file not found: {p}")
        if kind == "dir" and not p.is_dir():
            raise self.fail(key, f"folder not found: {p}")
        return p

    # -- sections --------------------------------------------------------------------------

    def suite(self, doc: Any) -> Suite:
        if doc is None:
            raise self.fail("", "the suite file is empty; it must be a mapping with keys: " + ", ".join(TOP_KEYS))
        if not isinstance(doc, dict):
            raise self.fail("", f"must be a mapping, got {_kind(doc)}")
        c = self.collect
        for k in doc:
            if not isinstance(k, str) or k not in TOP_KEYS:
                self.errors.append(self.fail(_join("", str(k)), f"unknown key; allowed: {', '.join(TOP_KEYS)}"))
        for k in REQUIRED_TOP:
            if k not in doc:
                self.errors.append(self.fail(k, "is required"))
        name = c(self.name, doc.get("name", "suite"), "name", default="suite")
        seed = c(self.integer, doc.get("seed", 0), "seed", lo=0, hi=2**32 - 1, default=0)
        batch_size = c(self.integer, doc.get("batch_size", 16), "batch_size", lo=1, default=16)
        data = c(self.data, doc["data"], default=None) if "data" in doc else None
        if data is None:  # the models are still checked, against a stand-in for the data
            data, self.num_labels = DataSpec("samples"), 0
        self.compile_default = c(self.boolean, doc.get("compile", False), "compile", default=False)
        models = c(self.models, doc["models"], data, default=()) if "models" in doc else ()
        attacks = c(self.attacks, doc["attacks"], models, default=()) if "attacks" in doc else ()
        defenses = c(self.defenses, doc.get("defenses", ["none"]), models, default=(DefenseSpec("none"),))
        devices = c(self.choices, doc.get("devices", ["cpu"]), "devices", None, _DEVICE_RE, default=("cpu",))
        precisions = c(self.choices, doc.get("precisions", ["fp32"]), "precisions", PRECISIONS, default=("fp32",))
        modes = c(self.choices, doc.get("eval_mode", ["oblivious"]), "eval_mode", EVAL_MODES, default=("oblivious",))
        eval_modes = c(self.eval_modes, modes, doc.get("adaptive_method", list(defense_registry.ADAPTIVE_METHODS)),
                       default=("oblivious",))
        eot_samples = c(self.integer, doc.get("eot_samples", defense_registry.EOT_SAMPLES), "eot_samples", lo=1, default=1)
        eval_draws = c(self.integer, doc.get("eval_draws", 1), "eval_draws", lo=1, default=1)
        cascade = c(self.boolean, doc.get("cascade", False), "cascade", default=False)
        unconstrained_check = c(self.boolean, doc.get("unconstrained_check", True), "unconstrained_check", default=True)
        shard_size = c(self.integer, doc["shard_size"], "shard_size", lo=1, default=None) if "shard_size" in doc else None
        include = c(self.rules, doc.get("include", []), "include", default=())
        exclude = c(self.rules, doc.get("exclude", []), "exclude", default=())
        if self.errors:
            raise self.errors[0] if len(self.errors) == 1 else SuiteErrors(self.errors)
        suite = Suite(
            name=name,
            seed=seed,
            data=data,
            models=models,
            attacks=attacks,
            defenses=defenses,
            devices=devices,
            precisions=precisions,
            batch_size=batch_size,
            eval_modes=eval_modes,
            eot_samples=eot_samples,
            eval_draws=eval_draws,
            cascade=cascade,
            unconstrained_check=unconstrained_check,
            shard_size=shard_size,
            include=include,
            exclude=exclude,
            executor_entry=doc.get("executor", "local"),
            path=str(self.path),
            lines=self.lines,
        )
        # the resolved suite as plain JSON: recorded in run.json, and hashed for --resume
        raw = dataclasses.asdict(suite)
        for key in ("path", "raw", "executor_entry", "lines", "shard_size"):  # none of them changes a number
            raw.pop(key)
        for data in [raw["data"], *(m["data"] for m in raw["models"] if m.get("data"))]:
            for newer in ("name", "options", "max_pixels"):  # keys newer than most suites: left out unset, so their digest stays
                if data.get(newer) in (None, (), []):
                    data.pop(newer, None)
        for variants in raw["attacks"]:  # what the registry worked out from type and params (and where a file lies)
            for attack in variants:
                for derived in ("norm", "minimum_norm", "path"):
                    attack.pop(derived, None)
        # keys at their defaults stay out, so a suite written before they existed keeps its digest
        for key, default in (("cascade", False), ("unconstrained_check", True)):
            if raw[key] == default:
                raw.pop(key)
        suite.raw = json.loads(json.dumps(raw, default=str))
        if not suite.cells():
            raise self.fail("include/exclude", "the rules leave an empty grid: no cell would run")
        return suite

    def data(self, value: Any, key: str = "data") -> DataSpec:
        """A data source (its registry checks its keys); sets ``self.num_labels`` to the number of classes its labels need."""
        spec, self.num_labels = data_registry.parse(value, key, self)
        return spec

    def models(self, value: Any, data: DataSpec) -> tuple[ModelSpec, ...]:
        """Each entry is resolved by its model source (bench/sources): this loader only handles the
        keys every model has (name, checkpoint, compile, data) and the checks across the suite."""
        items = self.listof(value, "models")
        suite_labels = self.num_labels
        out, seen = [], set()
        for i, item in enumerate(items):
            spec = self.collect(self.model, i, item, data, suite_labels, seen)
            if spec is not None:
                out.append(spec)
        self.num_labels = suite_labels
        return tuple(out)

    def model(self, i: int, item: Any, data: DataSpec, suite_labels: int, seen: set) -> ModelSpec:
        """One ``models:`` entry, resolved by its source."""
        key = f"models[{i}]"
        if not isinstance(item, dict):
            raise self.fail(key, f"must be a mapping, got {_kind(item)}")
        source = sources.source_of(item)
        if source is None:
            raise self.fail(f"{key}.arch", f"unknown model {item.get('arch')!r}; allowed: " + sources.ALLOWED)
        item = self.mapping(item, key, dict.fromkeys([*sources.COMMON_KEYS, *source.KEYS]))
        model_data = data
        if "data" in item:  # this model's own data (a suite may mix ImageNet models and detectors)
            model_data = self.data(item["data"], f"{key}.data")
        else:
            self.num_labels = suite_labels
        checkpoint, card = None, {}
        if "checkpoint" in item:
            checkpoint, card = self.checkpoint(item["checkpoint"], f"{key}.checkpoint")
        ctx = sources.Context(key, self.base, model_data.image_size, self.fail, card)
        default_name = Path(checkpoint).stem if checkpoint else _default_name(item)
        name = self.name(item.get("name", default_name), f"{key}.name")
        if name in seen:
            raise self.fail(f"{key}.name", f"duplicate model name {name!r}; names must be unique")
        seen.add(name)
        spec = sources.resolve(item, ctx, name=name, checkpoint=checkpoint,
                               compile=self.boolean(item.get("compile", self.compile_default), f"{key}.compile"),
                               data=model_data if model_data != data else None)
        if checkpoint and spec.weights is not None:
            raise self.fail(f"{key}.checkpoint", "give either weights or checkpoint, not both")
        if spec.num_classes < self.num_labels:
            raise self.fail(f"{key}.num_classes", f"model {name!r} has {spec.num_classes} classes but the data has labels up to {self.num_labels - 1}")
        resized = spec.preprocess.resize ** 2  # the smallest copy an image is resized to before its crop
        if resized > model_data.pixel_budget:  # every image would be skipped: say so now, naming both sides
            which = "data.max_pixels" if model_data.max_pixels else f"{key}.crop_pct" if "crop_pct" in item else f"{key}.input_size"
            raise self.fail(which, f"model {name!r} resizes images to at least {spec.preprocess.resize}×{spec.preprocess.resize} "
                                   f"= {resized / 1e6:.1f} M pixels before its crop, over the data's pixel budget of "
                                   f"{model_data.pixel_budget / 1e6:g} M (data.max_pixels); raise max_pixels or crop_pct")
        try:  # shape problems surface here, before anything runs (and in --dry-run)
            sources.probe(spec)
        except model_registry.ProbeError as exc:
            size_key = (f"{key}.input_size" if "input_size" in item else f"{key}.data.image_size" if "data" in item
                        else "data.image_size" if spec.source == "builtin" else key)
            raise self.fail(size_key, f"model {name!r} ({spec.arch}) at {spec.input_size} px: {exc}") from None
        return spec

    def attacks(self, value: Any, models: tuple[ModelSpec, ...]) -> tuple[tuple[AttackSpec, ...], ...]:
        """Each entry is resolved by its attack source (bench/attacks): this loader only checks names across entries."""
        out, seen = [], set()
        for i, item in enumerate(self.listof(value, "attacks")):
            variants = self.collect(attack_registry.parse, item, f"attacks[{i}]", self, models)
            if variants is None:
                continue
            name = variants[0].name
            if name in seen:
                raise self.fail(f"attacks[{i}].name", f"duplicate attack name {name!r}; names must be unique")
            seen.add(name)
            out.append(variants)
        return tuple(out)

    def checkpoint(self, value: Any, key: str) -> tuple[str, dict]:
        """A checkpoint path (resolved) and the card beside it, if any (``X.pt`` → ``X.json``)."""
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a path string, got {_kind(value)}")
        p = Path(value)
        p = (p if p.is_absolute() else self.base / p).resolve()
        if not p.is_file():
            from bench.train import RECIPES

            recipe, _, method = p.stem.partition("-")  # bench train names a checkpoint <recipe>[-<method>]
            hint = ""
            from bench.adversarial_training import METHODS

            if recipe in RECIPES and (not method or method in METHODS):
                digits = RECIPES[recipe].data == "digits"
                hint = (f"; make it with `bench train {recipe}{'' if digits else ' --data <faces data folder>'}"
                        f"{f' --adversarial {method} --train-eps <ε>' if method else ''} --out {p.parent}` "
                        f"(or `{'make robust' if digits else 'make faces'}`)")
            raise self.fail(key, f"checkpoint not found: {p}{hint}")
        card = {}
        card_file = p.with_suffix(".json")
        if card_file.is_file():
            try:
                card = json.loads(card_file.read_text())
            except (OSError, ValueError) as exc:
                raise self.fail(key, f"the card {card_file} is not valid JSON ({exc})") from None
            if not isinstance(card, dict):
                raise self.fail(key, f"the card {card_file} must be a JSON object")
        return str(p), card

    def param(self, value: Any, key: str, default: Any) -> Any:
        """An argument (of an attack, for the attack registry), typed after its default; numbers may be
        written as fractions."""
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise self.fail(key, f"must be true or false, got {value!r}")
            return value
        if isinstance(default, int):
            return self.integer(value, key)
        if isinstance(default, float):
            return self.number(value, key)
        if isinstance(value, str) and _FRACTION_RE.match(value):
            return self.number(value, key)
        if isinstance(value, (int, float, str, bool)) or value is None:
            return value
        if isinstance(value, list) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
            return tuple(value)  # a list of numbers or names (AutoAttack's attacks: [apgd-ce, apgd-t])
        raise self.fail(key, f"must be a number, string, boolean or a list of numbers or names, got {_kind(value)}")

    def defenses(self, value: Any, models: tuple[ModelSpec, ...]) -> tuple[DefenseSpec, ...]:
        out: list[DefenseSpec] = []
        for i, item in enumerate(self.listof(value, "defenses")):
            for spec in self.collect(defense_registry.parse, item, f"defenses[{i}]", self, default=[]):
                if self.collect(self.probe_defense, spec, f"defenses[{i}]", models, default=False) is not False:
                    out.append(spec)
        labels = [d.label for d in out]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise self.fail("defenses", f"duplicate defenses: {', '.join(dup)}")
        return tuple(out)

    def probe_defense(self, spec: DefenseSpec, key: str, models: tuple[ModelSpec, ...]) -> None:
        """Run a defense that can fail on its input (user code, size-dependent ones) on a small
        batch at every input size it will see, before any compute."""
        for size in sorted({m.preprocess.input_size for m in models}):
            try:
                defense_registry.probe(spec, size)
            except defense_registry.DefenseError as exc:
                where = _join(key, exc.key) if exc.key and spec.type != "chain" else key  # a chain's part: its entry
                raise self.fail(where, f"{spec.label} at {size} px: {exc}") from None
        return True

    def eval_modes(self, modes: tuple[str, ...], value: Any) -> tuple[str, ...]:
        """oblivious and adaptive-<method> for each method asked for (aliases resolved)."""
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise self.fail("adaptive_method", f"must be a method or a non-empty list of them; allowed: {', '.join(ADAPTIVE_METHODS)}")
        methods: list[str] = []
        for j, m in enumerate(items):
            key = "adaptive_method" if isinstance(value, str) else f"adaptive_method[{j}]"
            if m not in ADAPTIVE_METHODS:
                raise self.fail(key, f"{m!r} is not allowed; allowed: {', '.join(defense_registry.ADAPTIVE_METHODS)} "
                                     f"({', '.join(f'{a} = {b}' for a, b in defense_registry.METHOD_ALIASES.items())}; both = all)")
            for x in defense_registry.ADAPTIVE_METHODS if m == "both" else [defense_registry.METHOD_ALIASES.get(m, m)]:
                if x not in methods:
                    methods.append(x)
        return tuple(m2 for m in modes for m2 in (["oblivious"] if m == "oblivious" else [f"adaptive-{x}" for x in methods]))

    def choices(self, value: Any, key: str, allowed: tuple[str, ...] | None, pattern: re.Pattern | None = None) -> tuple[str, ...]:
        items = self.listof([value] if isinstance(value, str) else value, key)
        text = ", ".join(allowed) if allowed else TOP_KEYS[key].removeprefix("list of ")
        for i, item in enumerate(items):
            ok = isinstance(item, str) and (item in allowed if allowed else bool(pattern.fullmatch(item)))
            if not ok:
                raise self.fail(f"{key}[{i}]", f"{item!r} is not allowed; allowed: {text}")
        if len(set(items)) != len(items):
            raise self.fail(key, "contains duplicates")
        return tuple(items)

    def rules(self, value: Any, key: str) -> tuple[dict[str, Any], ...]:
        if value in (None, []):
            return ()
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of rules, got {_kind(value)}")
        out = []
        for i, rule in enumerate(value):
            rkey = f"{key}[{i}]"
            rule = self.mapping(rule, rkey, RULE_KEYS)
            if not rule:
                raise self.fail(rkey, "an empty rule matches every cell; name at least one of: " + ", ".join(RULE_KEYS))
            parsed = {}
            for k, v in rule.items():
                vals = v if isinstance(v, list) else [v]
                if k == "eps":
                    parsed[k] = [self.number(x, f"{rkey}.eps") for x in vals]
                else:
                    if not all(isinstance(x, str) for x in vals):
                        raise self.fail(f"{rkey}.{k}", "must be a name or a list of names")
                    parsed[k] = vals
            out.append(parsed)
        return tuple(out)


def _default_name(item: dict[str, Any]) -> str:
    """A model's name when the entry gives none: the last part of what it names, as a plain name."""
    what = str(item.get("arch") or item.get("factory") or item.get("file") or "model")
    tail = re.split(r"[/:\\]", what.rstrip("/"))[-1]
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(tail).stem if "file" in item else tail) or "model"


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _range_text(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"
