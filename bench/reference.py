"""The suite reference (docs/suite-reference.md), generated from the registries themselves so it cannot drift.

``python -m bench.reference > docs/suite-reference.md`` (``make docs``) writes it; tests/test_reference.py checks
that the committed file is :func:`render`'s output, and that every key it documents is one the registries accept
and the reverse.

What comes from where:

- the top level: ``bench.suite.TOP_KEYS`` (its text is the meaning), ``REQUIRED_TOP``, and the defaults of a
  minimal suite as ``bench.suite.parse_suite`` resolves it;
- ``data``: ``bench.data.COMMON_KEYS`` and each source's :class:`~bench.data.base.SourceInfo` (path key, required
  keys, options and their defaults, splits, default image size);
- ``models``: ``bench.sources.COMMON_KEYS`` and each source module's ``NAME`` and ``KEYS``, in ``CLAIM_ORDER``;
- ``attacks``: ``bench.attacks.COMMON_KEYS``, the python source's ``KEYS``, AutoAttack's versions and arguments,
  the ``sgd`` attack's constructor; for torchattacks, foolbox and ART, where their arguments come from;
- ``defenses``: ``bench.defenses.DEFENSES``, each type's :class:`~bench.defenses.base.Param` (default, allowed
  values, whether a list expands), label and adaptive methods;
- ``executor``: ``bench.executors.KEYS`` and the defaults of :class:`~bench.specs.ExecutorSpec`;
- ``include``/``exclude``: ``bench.suite.RULE_KEYS``.

Ranges the loader checks inline (``data.image_size``, ``seed``, …) are read off the loader itself: a suite with
an out-of-range value is parsed and the loader's own "must be …" is quoted. The meanings of keys that have no
text in the code are written here, in :data:`DATA_TEXT`, :data:`MODEL_TEXT`, :data:`ATTACK_TEXT` and
:data:`RULE_TEXT`; a key the registries accept without a text here is an error, so a new key cannot be left out.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from types import ModuleType
from typing import Any

REGENERATE = "python -m bench.reference > docs/suite-reference.md"

# A minimal suite the loader accepts (offline, no files): its resolved values are the top level's defaults, and
# variants of it with one bad value give the loader's own wording of a range.
_BASE = {"name": "reference", "data": {"source": "digits"}, "models": [{"arch": "small_cnn"}],
         "attacks": [{"type": "fgsm", "eps": 0.1}]}

DATA_TEXT = {
    "source": "which data source (below)",
    "limit": "take at most this many images",
    "image_size": "the input size of models that do not bring their own (the builtin architectures)",
    "max_pixels": "the largest image decoded, width × height; larger images are skipped with their reason",
    "split": "which split of the data",
    "path": "the data's location, relative to the suite file's folder (or absolute)",
    "root": "the folder torchvision's `download=True` fills, relative to the suite file's folder (or absolute); "
            "read from disk, never downloaded",
    "name": "which dataset",
    "order": "the order images are taken in: `balanced` (round-robin across classes, so any `limit` keeps them "
             "balanced) or `file` (the dataset's own order: RobustBench's first n test images)",
    "image_column": "the column holding the images (the `Image` feature: encoded bytes, or a path relative to the folder)",
    "label_column": "the column of integer classes (class names come from its `ClassLabel` feature where it has one)",
}

MODEL_TEXT = {
    "common": {
        "name": "the model's name in the results (letters, digits, `-`, `_`, `.`; unique in the suite); default: the "
                "checkpoint's file name, else the last part of what the entry names (`resnet50`, `build`, `tiny_net`)",
        "checkpoint": "a state dict loaded into the network the source builds, with `torch.load(weights_only=True)`; the "
                      "card beside it (`X.json` for `X.pt`, as `bench train` writes) fills what the entry leaves open. "
                      "Not together with `weights`",
        "compile": "`torch.compile` this model (default: the suite's `compile`)",
        "data": "this model's own data, a `data` entry as above (default: the suite's)",
        "num_classes": "the number of logits the model returns (overrides the source's)",
        "input_size": "the side of the square image the model takes (overrides the source's; keeps its crop fraction)",
        "mean": "per-channel normalisation for images in [0, 1], 3 numbers (overrides the source's)",
        "std": "per-channel normalisation for images in [0, 1], 3 numbers > 0 (overrides the source's)",
        "interpolation": "the resize's interpolation",
        "crop_pct": "input size / resize size: images are resized to input size / crop_pct, then centre-cropped",
        "class_names": "one name per class, `num_classes` of them",
    },
    "memory": {"memory": "written by `bench.run(…, models={name: module})`, never by hand: the module held in memory"},
    "builtin": {"arch": "the architecture", "weights": "pretrained weights, per architecture"},
    "torchvision": {"arch": "`torchvision/<name>`: any classification builder of `torchvision.models`",
                    "weights": "`null` (random init), `imagenet` (the builder's DEFAULT weights enum) or an enum member "
                               "name (`IMAGENET1K_V1`)"},
    "timm": {"arch": "`timm/<name>`: any timm model",
             "weights": "`null` (random init), `imagenet` (the model's default pretrained tag) or a pretrained tag"},
    "factory": {"factory": "`\"file.py:function\"` (relative to the suite file's folder) or `\"pkg.module:function\"`: "
                           "the code runs",
                "kwargs": "keyword arguments for the function: a mapping of plain values (numbers, strings, booleans, "
                          "null, lists of them)"},
    "file": {"file": "a `torch.export` ExportedProgram (`.pt2`), relative to the suite file's folder; opened as data",
             "trust": "`true`: load the program with `torch.export.load` as it is, running what it holds"},
    "robustbench": {"source": "`robustbench` (then `name` is the zoo entry)",
                    "arch": "`robustbench/<entry>`: the zoo entry (then `name` is yours)",
                    "dataset": "the zoo's dataset",
                    "threat_model": "the zoo's threat model",
                    "model_dir": "RobustBench's `model_dir`, relative to the suite file's folder: weights at "
                                 "`<model_dir>/<dataset>/<threat_model>/<entry>.pt`. Not together with `checkpoint`"},
}

ATTACK_TEXT = {
    "name": "the attack's name in the results (unique in the suite); default: its type (`pgd`, `foolbox-LinfPGD`, "
            "`autoattack-standard`) or a python attack's function name",
    "type": "where the attack comes from and which it is (the sections below)",
    "target": "a class index: the attack is targeted at that class (for attacks with a targeted mode)",
    "restarts": "the harness's own key: run the attack N times, each run on the images the runs before did not fool, "
                "keeping the first adversarial example found (for an attack with a random start or a `seed`)",
    "eps": "the budget in pixel space for images in [0, 1], in the attack's norm: a number, a fraction (`8/255`) or a "
           "list of them (one cell each); in (0, 1] for an L∞ attack, > 0 for others. Required by attacks with a "
           "budget; refused by attacks without one; optional for minimum-norm attacks",
}

RULE_TEXT = {
    "model": "model names",
    "attack": "attack names",
    "eps": "budgets (numbers or fractions)",
    "defense": "defense types (`jpeg`) or labels (`jpeg-q50`)",
    "eval_mode": "`oblivious`, `adaptive`, or a method (`adaptive-bpda`, `adaptive-diff`)",
    "device": "devices (`cpu`, `cuda`, `cuda:1`)",
    "precision": "precisions",
}


# ---------------------------------------------------------------------------------------------
# Helpers


def _markdown(text: str) -> str:
    """reStructuredText's ``x`` and :role:`a.b` (or :role:`~a.b`, the last part alone) as markdown."""
    text = re.sub(r":\w+:`~(?:[\w.]*\.)?(\w+)`", r"`\1`", text)
    text = re.sub(r":\w+:`\.?([\w.]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _clean(text: str) -> str:
    """Text as markdown on one line, safe in a table cell."""
    return " ".join(_markdown(text).split()).replace("|", "\\|")


def _paragraphs(obj: Any, n: int = 1) -> str:
    """The first ``n`` paragraphs of an object's docstring as markdown; a paragraph that ends with a colon brings
    the list after it (median's)."""
    paragraphs = (inspect.getdoc(obj) or "").split("\n\n")
    while n < len(paragraphs) and paragraphs[n - 1].rstrip().endswith(":") and paragraphs[n].lstrip().startswith("- "):
        n += 1
    out = []
    for para in paragraphs[:n]:
        if para.lstrip().startswith("- "):  # a list: one line per item
            items = re.split(r"\n(?=\s*- )", para.strip())
            out.append("\n".join("- " + _clean(item.strip()[2:]).replace("\\|", "|") for item in items))
        else:
            out.append(_clean(para).replace("\\|", "|"))
    return "\n\n".join(out)


def _yaml(value: Any) -> str:
    """A value as a suite would write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _code(value: Any) -> str:
    return f"`{_yaml(value)}`"


def _choices(values: Any) -> str:
    return ", ".join(_code(v) for v in values)


def _row(*cells: str) -> str:
    return "| " + " | ".join(c if c else "–" for c in cells) + " |"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return [_row(*header), "|" + "---|" * len(header), *(_row(*r) for r in rows)]


def _text(table: dict[str, str], key: str, where: str) -> str:
    if key not in table:
        raise KeyError(f"bench/reference.py has no text for the {where} key {key!r}: add one, then `make docs`")
    return table[key]


def _loader_says(patch: dict[str, Any], key: str) -> str:
    """What the suite loader says about a bad value of ``key`` (``patch`` puts it into the minimal suite), without
    the value: ``must be between 16 and 4096, got 0`` → ``between 16 and 4096``."""
    from bench.suite import SuiteError, parse_suite

    try:
        parse_suite({**_BASE, **patch})
    except SuiteError as exc:
        if exc.key != key:
            raise AssertionError(f"probing {key}: the loader complained about {exc.key}: {exc.message}") from None
        return re.sub(r"^must be |, got .*$", "", exc.message)
    raise AssertionError(f"probing {key}: the loader accepted {patch}")


# ---------------------------------------------------------------------------------------------
# Sections


def _top_level() -> list[str]:
    from bench import defenses
    from bench.cells import DEFAULT_SHARD_SIZE
    from bench.suite import REQUIRED_TOP, TOP_KEYS, parse_suite

    suite = parse_suite(_BASE)
    defaults = {
        "seed": _code(suite.seed),
        "defenses": _code([d.label for d in suite.defenses]),
        "devices": _code(suite.devices),
        "precisions": _code(suite.precisions),
        "batch_size": _code(suite.batch_size),
        "compile": _code(suite.models[0].compile),
        "eval_mode": _code(suite.eval_modes),
        "adaptive_method": _code(defenses.ADAPTIVE_METHODS),
        "eot_samples": _code(suite.eot_samples),
        "eval_draws": _code(suite.eval_draws),
        "cascade": _code(suite.cascade),
        "shard_size": _code(DEFAULT_SHARD_SIZE),
        "unconstrained_check": _code(suite.unconstrained_check),
        "include": "no rule",
        "exclude": "no rule",
        "executor": _code(suite.executor_entry),
    }
    extra = {
        "seed": f"{_loader_says({'seed': -1}, 'seed')}; seeds random init and random-start attacks",
        "name": "the results' folder name",
        "data": "the images: [`data`](#data)",
        "models": "[`models`](#models)",
        "attacks": "[`attacks`](#attacks); a list of ε values is one cell each",
        "defenses": "names or mappings: [`defenses`](#defenses); a list of values for a key is one defense each",
        "include": "[rules](#include-and-exclude): a cell is kept if it matches some `include` rule (when there are any)",
        "exclude": "[rules](#include-and-exclude): a cell matching any `exclude` rule is dropped",
        "shard_size": "each shard's outcomes are on disk before the next starts; a resume runs only the shards "
                      "without them; on Ray the shards of one cell go to different workers ([Running](running.md#crash-safety))",
        "executor": "[`executor`](#executor); not part of the suite's digest (a run may be resumed on another executor)",
    }
    rows = []
    for key, meaning in TOP_KEYS.items():
        required = "yes" if key in REQUIRED_TOP else ""
        default = "" if required else defaults[key] if key in defaults else _text({}, key, "top-level")
        text = _clean(meaning) + (f"; {extra[key]}" if key in extra else "")
        rows.append((f"`{key}`", required, default, text))
    return ["## Top level", "",
            "The keys of a suite file (`bench/suite.py`: `TOP_KEYS`, `REQUIRED_TOP`; defaults as the loader fills them "
            "in). Any other key is an error naming the allowed ones.", "",
            *_table(("key", "required", "default", "allowed / meaning"), rows), ""]


def _data() -> list[str]:
    from bench import data
    from bench.data import base, hf, torchvision_formats

    sources = data.SOURCES
    common = [k for k in data.COMMON_KEYS if k not in ("path", "split")]  # not every source takes these two
    lo, hi = data.MAX_PIXELS_RANGE
    allowed = {
        "source": _choices(sources),
        "limit": "an integer " + _loader_says({"data": {"source": "digits", "limit": 0}}, "data.limit"),
        "image_size": "an integer " + _loader_says({"data": {"source": "digits", "image_size": 0}}, "data.image_size"),
        "max_pixels": f"an integer between {lo:,} and {hi:,}",
    }
    from bench.specs import DEFAULT_MAX_PIXELS

    defaults = {"source": "", "limit": "every image", "image_size": "per source (below)",
                "max_pixels": f"`{DEFAULT_MAX_PIXELS:,}`".replace(",", "_")}
    rows = []
    for k in common:
        required = "yes" if k == "source" else ""
        rows.append((f"`{k}`", required, defaults[k], f"{allowed[k]}: {_text(DATA_TEXT, k, 'data')}"))
    out = ["## `data`", "",
           "The suite's images (`data:`), and a model's own (`models[i].data:`): one source each, named by `source:` "
           "(`bench/data/`: `SOURCES`, `COMMON_KEYS`, each source's `SourceInfo`). Any other key, or another source's, "
           "is an error.", "",
           "### Keys every source takes", "",
           *_table(("key", "required", "default", "allowed / meaning"), rows), ""]
    modules = {s.name: m for m in (data.samples, data.digits, data.folders, torchvision_formats, hf)
               for s in getattr(m, "SOURCES", (getattr(m, "SOURCE", None),)) if s is not None}
    described: set[ModuleType] = set()
    for name, info in sources.items():
        module = modules[name]
        out += [f"### `{name}`", ""]
        if module in described:
            out += [f"Described with the source before it (`{module.__name__}`).", ""]
        else:
            out += [_paragraphs(module), ""]
            described.add(module)
        if info.size_of is not None and module is torchvision_formats:
            sizes = {}
            for ds, layout in torchvision_formats.LAYOUTS.items():
                sizes.setdefault(layout.size, []).append(ds)
            size = "the dataset's native size: " + "; ".join(f"{s} ({', '.join(n)})" for s, n in sizes.items())
        else:
            size = f"{info.image_size}"
        out += [f"Default `image_size`: {size}.", ""]
        rows = []
        if info.needs_path:
            kind = {"file": "a file", "dir": "a folder"}[info.needs_path]
            rows.append((f"`{info.path_key}`", "yes", "", f"{kind}: {_text(DATA_TEXT, info.path_key, 'data')}"))
        for k in info.required:
            if module is torchvision_formats and k == "name":
                choice = _choices(torchvision_formats.NAMES)
            else:
                choice = "a value"
            rows.append((f"`{k}`", "yes", "", f"{choice}: {_text(DATA_TEXT, k, 'data')}"))
        if info.splits is None:
            rows.append(("`split`", "", _code(info.default_split), f"any split the data has: {DATA_TEXT['split']}"))
        elif info.splits:
            only = ""
            if module is torchvision_formats:
                rare = {s: [n for n, lay in torchvision_formats.LAYOUTS.items() if s in lay.splits] for s in info.splits}
                only = "; " + "; ".join(f"`{s}`: {', '.join(n)} only" for s, n in rare.items()
                                        if len(n) < len(torchvision_formats.LAYOUTS))
            rows.append(("`split`", "", _code(info.splits[0]), f"{_choices(info.splits)}: {DATA_TEXT['split']}{only}"))
        for k in info.options:
            if k == "order":
                default, choice = _code(info.defaults.get(k)), _choices(base.ORDERS)
            elif module is hf:
                default, choice = _code(hf._columns(data.DataSpec("hf"))[hf.KEYS.index(k)]), "a column name"
            else:
                default, choice = _code(info.defaults.get(k)), "a value"
            rows.append((f"`{k}`", "", default, f"{choice}: {_text(DATA_TEXT, k, 'data')}"))
        if rows:
            out += [*_table(("key", "required", "default", "allowed / meaning"), rows), ""]
        else:
            out += ["No keys of its own.", ""]
    return out


def _models() -> list[str]:
    from bench import sources
    from bench.models import ARCHS
    from bench.specs import MIN_CROP_PCT, crop_problem

    probe = {"models": [{"arch": "small_cnn", "num_classes": 1}]}
    allowed = {
        "name": "a name",
        "checkpoint": "a file",
        "compile": "`true`, `false`",
        "data": "a mapping",
        "num_classes": _loader_says(probe, "models[0].num_classes"),
        "input_size": _loader_says({"models": [{"arch": "small_cnn", "input_size": 1}]}, "models[0].input_size"),
        "mean": "3 numbers",
        "std": "3 numbers",
        "interpolation": _choices(sources.INTERPOLATIONS),
        "crop_pct": re.sub(r"^must be |, got .*$", "", crop_problem(0, 224) or f"[{MIN_CROP_PCT}, 1]"),
        "class_names": "a list of strings",
    }
    rows = [(f"`{k}`", allowed[k], _text(MODEL_TEXT["common"], k, "models")) for k in sources.COMMON_KEYS]
    out = ["## `models`", "",
           "One entry per model; each names exactly one source (`bench/sources/`: `COMMON_KEYS`, each source module's "
           "`NAME` and `KEYS`). Sources are asked in this order whether an entry is theirs: "
           + ", ".join(f"`{m.NAME}`" for m in sources.CLAIM_ORDER) + ". The source's name is the `model_source` "
           "column. Preprocessing the source knows (weights enum, timm config, card, the factory's module) is "
           "overridden by the entry's own keys.", "",
           "### Keys every source takes", "",
           *_table(("key", "allowed", "meaning"), rows), ""]
    for module in sources.CLAIM_ORDER:
        name = module.NAME
        out += [f"### `{name}`", "", _paragraphs(module), ""]
        texts = MODEL_TEXT.get(name, {})
        rows = []
        for k in module.KEYS:
            text = _text(texts, k, f"models ({name})")
            default, choice = "", ""
            if name == "builtin" and k == "arch":
                choice = _choices(ARCHS)
            elif name == "builtin" and k == "weights":
                default = _code(None)
                choice = "; ".join(f"{a}: {_choices(info.weights)}" for a, info in ARCHS.items())
            elif name in ("torchvision", "timm") and k == "weights":
                default = _code(None)
            elif name == "file" and k == "trust":
                default, choice = _code(False), "`true`, `false`"
            elif name == "robustbench" and k == "dataset":
                default, choice = _code(module.DEFAULT_DATASET), _choices(module.DATASETS)
            elif name == "robustbench" and k == "threat_model":
                default, choice = _code(module.DEFAULT_THREAT_MODEL), _choices(module.THREAT_MODELS)
            elif name == "robustbench" and k == "model_dir":
                default = _code(module.DEFAULT_MODEL_DIR)
            rows.append((f"`{k}`", default, f"{choice}: {text}" if choice else text))
        out += [*_table(("key", "default", "allowed / meaning"), rows), ""]
    return out


def _attacks() -> list[str]:
    from bench import attacks
    from bench.attacks import autoattack_attacks, python_attacks, torchattacks_attacks
    from bench.attacks.sgd import SGD
    from bench.specs import format_eps

    restarts = _loader_says({"attacks": [{"type": "fgsm", "eps": 0.1, "restarts": 0}]}, "attacks[0].restarts")
    allowed = {"name": "a name", "type": "a type", "target": "an integer >= 0", "restarts": f"an integer {restarts}",
               "eps": "a number or a list"}
    defaults = {"name": "its type", "type": "", "target": "untargeted", "restarts": _code(1), "eps": ""}
    rows = [(f"`{k}`", "yes" if k == "type" else "", defaults[k], f"{allowed[k]}: {_text(ATTACK_TEXT, k, 'attacks')}")
            for k in attacks.COMMON_KEYS]
    out = ["## `attacks`", "",
           "An entry's `type` names where the attack comes from (`bench/attacks/`: `COMMON_KEYS`, one module per "
           "source): " + ", ".join(f"`{name}`" for name in attacks.SOURCES) + " (below). Whatever the source, the "
           "attack runs through the same path: the model wrapper, the crafting's seed, 8-bit quantisation, the "
           "per-image budget check, query counting, failure isolation and timing.", "",
           "An entry's keys are these, the keys of its source, and the attack's own arguments, each checked against "
           "what the attack accepts before anything runs (an unknown key names the allowed ones; a value is typed after "
           "the argument's default; numbers may be fractions).", "",
           "### Keys every attack takes", "",
           *_table(("key", "required", "default", "allowed / meaning"), rows), ""]
    # torchattacks
    out += [f"### `{torchattacks_attacks.NAME}`", "", _paragraphs(torchattacks_attacks), "",
            "Arguments: the attack class's constructor arguments after `model`, with the constructor's defaults (an "
            "attack whose constructor has an argument without a default is not offered); `seed`, where the class has "
            "one, defaults to the crafting's seed. L2 budgets: "
            + _choices(torchattacks_attacks._L2_ATTACKS) + ", and attacks with a `norm` argument set to L2. "
            "Score-based (black-box): " + _choices(torchattacks_attacks.BLACK_BOX) + ". If torchattacks is missing: "
            f"{_clean(torchattacks_attacks.INSTALL)}.", ""]
    # sgd, the harness's own
    params = [p for p in list(inspect.signature(SGD.__init__).parameters.values())[2:]]
    rows = [(f"`{p.name}`", f"`{format_eps(p.default)}`" if p.name == "eps" else _code(p.default), _sgd_text(p.name))
            for p in params]
    out += ["### `sgd`", "",
            f"Type `sgd`, in the torchattacks source: {_paragraphs(SGD)}", "",
            *_table(("key", "default", "meaning"), rows), ""]
    # foolbox, art
    for module in (attacks.foolbox_attacks, attacks.art_attacks):
        out += [f"### `{module.NAME}`", "", _paragraphs(module), "",
                f"Type `{module.PREFIX}<Attack>`; arguments: the class's constructor arguments, with its defaults. "
                f"An optional extra: {_clean(module.INSTALL)}; where it is missing the suite still loads and the "
                "attack's cells are skipped with that command as their reason.", ""]
    # autoattack, the authors'
    aa = autoattack_attacks
    params = {}
    for version in aa.VERSIONS:
        for k, v in aa._info(version).params.items():
            if k != "eps":
                params.setdefault(k, (v, []))[1].append(version)
    texts = {"norm": f"{_choices(aa.NORMS)}: the norm of `eps`",
             "seed": "an integer: pins the seed (default: the crafting's seed)",
             "attacks": f"the attacks to run, in order, distinct, among {_choices(aa.SUBATTACKS)}"}
    rows = []
    for k, (default, versions) in params.items():
        only = "" if len(versions) == len(aa.VERSIONS) else f" (`{aa.PREFIX}{'`, `'.join(versions)}` only)"
        rows.append((f"`{k}`", _code(default) if default is not None else "the crafting's seed" if k == "seed" else "",
                     _text(texts, k, "autoattack") + only))
    order = "; ".join(f"`{v}`: {', '.join(a)}" for v, a in aa.ORDER.items())
    out += [f"### `{aa.NAME}`", "", _paragraphs(aa), "",
            f"Types: {', '.join(f'`{aa.PREFIX}{v}`' for v in aa.VERSIONS)}; `eps` required. The versions' attacks, in "
            f"order: {order}. An optional extra: {_clean(aa.INSTALL)}.", "",
            *_table(("key", "default", "allowed / meaning"), rows), ""]
    # python, the user's own
    rows = [(f"`{k}`", "yes" if k == "fn" else "", _code(python_attacks.NORMS[0]) if k == "norm" else "", _clean(text))
            for k, text in python_attacks.KEYS.items()]
    call = re.search(r"(fn\(model.*?\)) ->", inspect.getdoc(python_attacks) or "")
    if call is None:
        raise KeyError("bench/attacks/python_attacks.py's docstring no longer shows the call fn(model, …) -> …")
    out += [f"### `{python_attacks.NAME}`", "",
            _paragraphs(python_attacks) + f" It is called once per batch as `{call.group(1)}`.", "",
            "Type `python`. Its keys, besides every parameter of the function after `(model, images, labels)` other "
            "than " + ", ".join(f"`{k}`" for k in python_attacks._GIVEN) + " (a parameter without a default must be "
            "given):", "",
            *_table(("key", "required", "default", "allowed / meaning"), rows), ""]
    return out


def _sgd_text(name: str) -> str:
    """An argument's line in the sgd attack's docstring (``eps (float): L∞ budget …``)."""
    from bench.attacks.sgd import SGD

    for line in (inspect.getdoc(SGD) or "").splitlines():
        match = re.match(rf"\s*{name} \((\w+)\): (.*?)(?: \(Default: .*\))?$", line)
        if match:
            return _clean(f"{match.group(1)}: {match.group(2)}")
    raise KeyError(f"the sgd attack's docstring does not describe {name!r}")


def _defenses() -> list[str]:
    from bench import defenses
    from bench.defenses import chain

    out = ["## `defenses`", "",
           "A list of defense names (`jpeg`) or mappings (`{type: jpeg, quality: [75, 50]}`) (`bench/defenses/`: "
           "`DEFENSES`, each type's `Param`s). A list of values for a key marked *expands* gives one defense each (every "
           "combination). A key without a default is required. Each defense's label, in the results and the report, "
           "spells out its parameters. Default: " + _code(["none"]) + ".", ""]
    examples = {"chain": {"of": (defenses.spec("bit_depth"), defenses.spec("jpeg"))},
                "python": {"fn": "my_defenses.py:squash", "differentiable": False, "randomized": False}}
    modules = {m.DEFENSE.name: m for m in defenses._MODULES}
    for name, info in defenses.DEFENSES.items():
        out += [f"### `{name}`", ""]
        if name in modules:
            out += [_paragraphs(modules[name]), ""]
        values = examples.get(name, info.defaults)
        label = info.label(values)
        if name in examples:
            methods = ("bpda; diff if any part has a differentiable version" if name == "chain"
                       else "bpda; diff with `differentiable: true`")
            random = "if any part is" if name == "chain" else "with `randomized: true`"
        else:
            s = defenses.spec(name)
            methods = ", ".join(defenses.methods(s)) or "none (no defense: nothing to adapt to)"
            random = "yes" if defenses.randomized(s) else "no"
        extra = f" At most {chain.MAX_DEPTH} deep." if name == "chain" else ""
        out += [f"Label: `{label}`{' (for the example)' if name in examples else ''}. Adaptive methods: {methods}. "
                f"Randomized: {random}.{extra}", ""]
        rows = []
        for p in info.params:
            default = "required" if p.default is None else _code(p.default)
            allowed = _clean(p.help if p.kind == "defenses" else p.allowed)  # a chain's parts: its help says it
            rows.append((f"`{p.name}`", default, allowed, "yes" if p.listable else "no"))
        if rows:
            out += [*_table(("key", "default", "allowed", "expands"), rows), ""]
        else:
            out += ["No keys.", ""]
    return out


def _executor() -> list[str]:
    from bench import executors
    from bench.specs import ExecutorSpec

    fields = {f.name: f.default for f in dataclasses.fields(ExecutorSpec)}
    rows = [(f"`{k}`", "yes" if k == "type" else "", _code(fields[k]) if fields[k] is not None else "", _clean(text))
            for k, text in executors.KEYS.items()]
    return ["## `executor`", "",
            f"Where the cells run (`bench/executors/`: `NAMES`, `KEYS`): {_choices(executors.NAMES)}, or a mapping "
            "with `type` and the keys below (the ray executor's alone). The command line's `--executor`, `--address`, "
            "`--workers`, `--cpus-per-worker` and `--max-retries` win. Not part of the suite's digest.", "",
            *_table(("key", "required", "default", "allowed / meaning"), rows), ""]


def _rules() -> list[str]:
    from bench.suite import RULE_KEYS

    rows = [(f"`{k}`", _text(RULE_TEXT, k, "include/exclude")) for k in RULE_KEYS]
    return ["## `include` and `exclude`", "",
            "Lists of rules (`bench/suite.py`: `RULE_KEYS`). A rule names at least one of these keys, each a value or a "
            "list of values; a cell matches a rule when it matches every key the rule names. A cell is kept if it "
            "matches some `include` rule (when there are any) and no `exclude` rule; rules that leave no cell are an "
            "error.", "",
            *_table(("key", "matches"), rows), ""]


def render() -> str:
    """docs/suite-reference.md, from the registries."""
    header = [
        f"<!-- Generated by `{REGENERATE}` (`make docs`) from the registries in bench/: do not edit by hand. "
        "tests/test_reference.py fails when this file and the code disagree. -->",
        "",
        "# Suite reference",
        "",
        "Every key a suite file may hold, with its type, allowed values and default as the suite loader and the "
        "registries know them. The whole file is checked before anything runs (`bench run --dry-run` too): an "
        "unknown key, a wrong type or a value out of range is one line `FILE:LINE: KEY: what is wrong; allowed: …`. "
        "For what the keys do, see the [README](../README.md) and the guides in this folder.",
        "",
        "- [Top level](#top-level)",
        "- [`data`](#data)",
        "- [`models`](#models)",
        "- [`attacks`](#attacks)",
        "- [`defenses`](#defenses)",
        "- [`executor`](#executor)",
        "- [`include` and `exclude`](#include-and-exclude)",
        "",
    ]
    body = [*_top_level(), *_data(), *_models(), *_attacks(), *_defenses(), *_executor(), *_rules()]
    return "\n".join(header + body).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
