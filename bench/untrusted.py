"""Opening files a user treats as data without running code they may hold.

Python's pickle runs whatever a file asks for while it loads (``__reduce__`` names any callable), and
so do the loaders built on it: ``torch.load(weights_only=False)``, ``torch.export.load`` (its docs: never
load an untrusted file), torchvision's CIFAR classes. A weights file, a dataset or an exported program
from the internet is data to its user; bench opens each as data, and refuses with one line naming the
file what would need more:

- **torch.save files** (checkpoints, hub and Hugging Face weights): :func:`load_tensors` is
  ``torch.load(weights_only=True)`` — tensors, containers and numbers, nothing called;
- **downloads with a hash in their name**: :func:`check_sha256` compares the file's SHA-256 with the
  name, as ``torch.hub`` does when it downloads (but also for a file already in the cache);
- **pickled data** (CIFAR batches): :func:`load_data_pickle` unpickles with :class:`DataUnpickler`,
  which admits only the numpy array reconstruction a data file holds;
- **torch.export programs** (``.pt2``): :func:`load_exported_program` scans the archive first — every
  entry ``torch.export.load`` would unpickle must load with ``weights_only=True``; custom and opaque
  objects, AOTInductor shared libraries and program text that torch would evaluate (symbolic shape
  expressions, names written into the generated Python code) are refused — then loads it inside
  :func:`no_code`, a guard that keeps anything the scan did not foresee from running code.

It imports nothing from bench; its errors are :class:`UnsafeFile`, which callers turn into their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import operator
import pickle
import re
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator


class UnsafeFile(ValueError):
    """A file bench will not open as data; the message is one line that names it."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _show(text: str, limit: int = 48) -> str:
    """A string from a file, quoted and cut short, safe to put in a one-line message."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


# ---------------------------------------------------------------------------------------------
# Hashes


_SHA256: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) → hex digest, per process


def sha256(path: str | Path) -> str:
    """The file's SHA-256 (hex), computed once per process for a given path, size and mtime."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def check_sha256(path: str | Path, expected: str | None, origin: str = "its name") -> None:
    """Raise :class:`UnsafeFile` unless the file's SHA-256 hex digest starts with ``expected``
    (torch.hub's rule for the hash in a file name; nothing to check when there is none)."""
    if not expected:
        return
    actual = sha256(path)
    if not actual.startswith(expected.lower()):
        raise UnsafeFile(f"{path}: its SHA-256 begins {actual[:len(expected)]}, but {origin} says {expected}: it is "
                         "not the published file (damaged or replaced); delete it and fetch it again")


_HF_BLOB = re.compile(r"[0-9a-f]{64}")


def check_hf_blob(path: str | Path) -> None:
    """A Hugging Face cache file is a link into ``blobs/``; an LFS file's blob is named by its
    SHA-256, which the content must have."""
    path = Path(path)
    if not path.is_symlink():
        return
    blob = path.resolve()
    if _HF_BLOB.fullmatch(blob.name):
        check_sha256(blob, blob.name, origin=f"the name of its Hugging Face cache blob ({path.name})")


# ---------------------------------------------------------------------------------------------
# torch.save files


def load_tensors(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, containers and numbers only."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for a pickle that asks for more; others for damage
        raise UnsafeFile(f"{path}: cannot be loaded as plain tensors (torch.load weights_only=True: {_first_line(exc)}); "
                         "bench opens weights as data and never runs what a file asks for") from None


def _plain_tensors(data: bytes) -> bool:
    """Whether a torch.save payload loads with ``weights_only=True`` (so it runs nothing)."""
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Pickled data


def _data_globals() -> dict[tuple[str, str], Any]:
    """What a pickled numpy array needs, under numpy 1's and numpy 2's module names."""
    import codecs

    import numpy as np

    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                       ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):
        out[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):  # protocol 5 pickles of contiguous arrays
            out[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return out


class DataUnpickler(pickle.Unpickler):
    """An unpickler for data files: dicts, lists, strings, bytes, numbers and numpy arrays. Any other
    global a pickle asks for raises :class:`UnsafeFile` before it is imported or called."""

    def __init__(self, file, *, name: str, what: str, **kwargs):
        super().__init__(file, **kwargs)
        self._name, self._what, self._allowed = name, what, _data_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise UnsafeFile(f"{self._name}: not {self._what}: it asks to load {module}.{name}, which a data file never "
                         "needs (bench opens data without running code)")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFile(f"{self._name}: not {self._what}: it refers to an object outside the file, which a data file "
                         "never does (bench opens data without running code)")


def load_data_pickle(path: str | Path, what: str, encoding: str = "latin1") -> Any:
    """Unpickle a data file with :class:`DataUnpickler` (``what`` names the format in the error)."""
    with open(path, "rb") as f:
        try:
            return DataUnpickler(f, name=str(path), what=what, encoding=encoding).load()
        except UnsafeFile:
            raise
        except Exception as exc:  # truncated, not a pickle at all …
            raise UnsafeFile(f"{path}: not {what}: it cannot be unpickled ({type(exc).__name__}: {_first_line(exc)})") from None


# ---------------------------------------------------------------------------------------------
# The guard: nothing the loader reaches runs code


class _Blocked(Exception):  # not a RuntimeError: torch.export.load swallows those and tries its old format
    pass


class Guard:
    """What :func:`no_code` stopped in its thread: ``(kind, entry, detail)``, kind ``pickle``,
    ``compiled`` or ``text``; ``names`` maps payload SHA-256 → archive entry, to say which it was."""

    def __init__(self, names: dict[str, str] | None = None):
        self.names = names or {}
        self.blocked: list[tuple[str, str, str]] = []

    def block(self, kind: str, entry: str, detail: str = "") -> _Blocked:
        self.blocked.append((kind, entry, detail))
        return _Blocked(f"{kind}: {entry} {detail}".strip())

    def entry(self, payload: Any) -> str:
        data = payload.getvalue() if isinstance(payload, io.BytesIO) else payload
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self.names.get(hashlib.sha256(bytes(data)).hexdigest(), "an entry of its archive")
        if isinstance(payload, (str, Path)):
            return str(payload)
        return "an entry of its archive"


_ACTIVE: dict[int, Guard] = {}  # thread id → its guard; the patches below act only in those threads
_LOCK = threading.Lock()
_ORIGINALS: list[tuple[Any, str, Any]] = []


def _guard() -> Guard | None:
    return _ACTIVE.get(threading.get_ident()) if _ACTIVE else None


def _patches() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """(owner, attribute, make(original) → replacement): each replacement defers to the original
    outside a guarded thread."""
    import sympy
    import torch
    import torch.fx

    def torch_load(original):
        def load(f, *args, weights_only=None, **kwargs):
            guard = _guard()
            if guard is None:
                return original(f, *args, weights_only=weights_only, **kwargs)
            try:
                return original(f, *args, weights_only=True, **kwargs)
            except _Blocked:
                raise
            except Exception:
                if weights_only:  # the caller asked for plain tensors and did not get them: its own error
                    raise
                raise guard.block("pickle", guard.entry(f)) from None
        return load

    def refuse(name):
        def make(original):
            def call(data, *args, **kwargs):
                guard = _guard()
                if guard is None:
                    return original(data, *args, **kwargs)
                raise guard.block("pickle", guard.entry(data))
            call.__name__ = name
            return call
        return make

    def unpickler(original):
        class Unpickler(original):
            def find_class(self, module, name):
                guard = _guard()
                if guard is not None:
                    raise guard.block("pickle", f"a pickle asking for {module}.{name}")
                return super().find_class(module, name)
        return Unpickler

    def sympify(original):
        def call(a, *args, **kwargs):
            guard = _guard()
            if guard is not None and isinstance(a, str):
                problem = sympy_problem(a)
                if problem:
                    raise guard.block("text", "a symbolic expression", f"{_show(a)}: {problem}")
            return original(a, *args, **kwargs)
        return call

    def create_node(original):
        def call(self, op, target, *args, **kwargs):
            guard = _guard()
            if guard is not None:
                if op in ("placeholder", "get_attr", "call_module", "call_method") and not (
                        isinstance(target, str) and _DOTTED.fullmatch(target)):
                    raise guard.block("text", f"a {op} node", f"the name {_show(str(target))} is not a plain name")
                node_kwargs = kwargs.get("kwargs") if "kwargs" in kwargs else (args[1] if len(args) > 1 else None)
                for key in (node_kwargs or {}):
                    if not (isinstance(key, str) and key.isidentifier()):
                        raise guard.block("text", "a graph node", f"the argument name {_show(str(key))} is not a plain name")
            return original(self, op, target, *args, **kwargs)
        return call

    def aoti(original):
        def call(*args, **kwargs):
            guard = _guard()
            if guard is None:
                return original(*args, **kwargs)
            raise guard.block("compiled", "data/aotinductor/")
        return call

    out = [(torch, "load", torch_load), (pickle, "loads", refuse("loads")), (pickle, "load", refuse("load")),
           (pickle, "Unpickler", unpickler), (torch._C, "_pickle_load_obj", refuse("_pickle_load_obj")),
           (sympy, "sympify", sympify), (torch.fx.Graph, "create_node", create_node)]
    try:
        from torch.export.pt2_archive import _package
        out.append((_package, "_load_aoti", aoti))
    except ImportError:  # an older torch without the pt2 archive module
        pass
    return out


@contextlib.contextmanager
def no_code(names: dict[str, str] | None = None) -> Iterator[Guard]:
    """While it is open, in this thread: ``torch.load`` loads with ``weights_only=True`` whatever its
    caller asked; ``pickle.load``/``loads``, ``pickle.Unpickler``'s globals and
    ``torch._C._pickle_load_obj`` raise; ``sympy.sympify`` takes only plain symbolic shape
    expressions; FX graph nodes take only plain names (they are written into Python code); no
    AOTInductor library is loaded. What it stops is recorded in the :class:`Guard` it yields (and
    raised as an exception torch does not catch). Everything is put back when the last guard closes.

    The patches are module attributes, so they are process-wide while a guard is open; each replacement
    acts only in a thread that holds a guard and defers to the original everywhere else, so another
    thread loading at the same time sees torch and pickle as they are."""
    guard = Guard(names)
    me = threading.get_ident()
    with _LOCK:
        if me in _ACTIVE:
            raise RuntimeError("no_code guards do not nest")
        if not _ACTIVE:
            for owner, attr, make in _patches():
                original = getattr(owner, attr)
                _ORIGINALS.append((owner, attr, original))
                setattr(owner, attr, make(original))
        _ACTIVE[me] = guard
    try:
        yield guard
    finally:
        with _LOCK:
            del _ACTIVE[me]
            if not _ACTIVE:
                while _ORIGINALS:
                    owner, attr, original = _ORIGINALS.pop()
                    setattr(owner, attr, original)


# ---------------------------------------------------------------------------------------------
# Symbolic shape expressions (torch.export evaluates them with sympy.sympify, i.e. Python's eval)


_DOTTED = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_SYM_TOKEN = re.compile(r"""(?P<space>\s+)|(?P<str>'[^'\\]*'|"[^"\\]*")
    |(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>\*\*|//|<=|>=|==|!=|[-+*/%(),<>&|~^=])""", re.X)
_SYM_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan)")
_SYM_SYMBOL = re.compile(r"[a-z]+\d+")  # s0, s77, u3, zuf0 …: torch's shape symbols
_SYM_STRING_ARG = {"Symbol": "symbol", "Dummy": "symbol", "Float": "number", "Integer": "number", "Rational": "number"}
_SYM_CORE = ("Symbol Dummy Integer Float Rational Add Mul Mod Max Min Abs floor ceiling sqrt exp log Eq Ne Lt Le Gt "
             "Ge Equality Unequality StrictLessThan StrictGreaterThan LessThan GreaterThan And Or Not Xor ITE Piecewise "
             "ExprCondPair Tuple true false True False None oo zoo nan pi E I IntInfinity NegativeIntInfinity")
_SYM_NAMES: set[str] | None = None
# Functions whose value grows without bound in their argument (PowByNatural(2, 10**12), LShift(1, …)): evaluating
# one hangs the load, so a shape expression may raise to small literal powers only (MAX_EXPONENT, no towers).
_UNBOUNDED = re.compile(r"pow|shift|factorial|binomial", re.I)
MAX_EXPONENT, MAX_DIGITS = 64, 19  # 19: int64's largest value, which torch writes as a bound


def _sympy_names() -> set[str]:
    global _SYM_NAMES
    if _SYM_NAMES is None:
        names = set(_SYM_CORE.split())
        try:
            import sympy
            import torch.utils._sympy.functions as functions

            names |= {n for n, v in vars(functions).items() if isinstance(v, type) and issubclass(v, sympy.Basic)
                      and not _UNBOUNDED.search(n)}
        except ImportError:
            pass
        _SYM_NAMES = names
    return _SYM_NAMES


def sympy_problem(text: str) -> str | None:
    """Why ``sympy.sympify(text)`` could run code (None when it is a plain shape expression: torch's
    shape symbols, numbers, arithmetic, comparisons, and sympy's and torch's math functions called by
    name). Attribute access, subscripts, other names and calling a call's result are what an
    expression that runs code needs; a string literal may only name a symbol or spell a number."""
    names = _sympy_names()
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _SYM_TOKEN.match(text, pos)
        if m is None:
            return f"it holds {text[pos]!r}, which no shape expression has"
        pos = m.end()
        if m.lastgroup != "space":
            tokens.append((m.lastgroup, m.group()))
    for i, (kind, value) in enumerate(tokens):
        before = tokens[i - 1] if i else ("", "")
        after = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "name":
            if after == ("op", "=") and before[1] in ("(", ",") and re.fullmatch(r"[a-z][a-z_]*", value):
                continue  # a keyword argument: positive=True, precision=53
            if value not in names and not _SYM_SYMBOL.fullmatch(value):
                return f"it names {value}, which is not a shape symbol or a math function"
        elif kind == "str":
            callee = tokens[i - 2][1] if i >= 2 and before == ("op", "(") else None
            if callee not in _SYM_STRING_ARG:
                return "it holds a string outside Symbol(...) or Float(...)"
            inner = value[1:-1]
            ok = (re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", inner) and "__" not in inner
                  if _SYM_STRING_ARG[callee] == "symbol" else _SYM_NUMBER.fullmatch(inner))
            if not ok:
                return f"the string {_show(inner)} is not a symbol name or a number"
        elif kind == "num" and len(value.split(".")[0].split("e")[0].split("E")[0]) > MAX_DIGITS:
            return f"it holds a number of more than {MAX_DIGITS} digits"
        elif kind == "op":
            if value == "(" and before[0] in ("str", "num") or value == "(" and before == ("op", ")"):
                return "it calls something other than a named math function"
            if value == "**":
                after2 = tokens[i + 2] if i + 2 < len(tokens) else ("", "")
                if after[0] != "num" or not after[1].isdigit() or int(after[1]) > MAX_EXPONENT or after2 == ("op", "**"):
                    return f"it raises to a power other than a literal up to {MAX_EXPONENT}"
            if value == "=" and not (before[0] == "name" and after[0] in ("name", "num", "str", "op")):
                return "it assigns"
    return None


# ---------------------------------------------------------------------------------------------
# torch.export programs


_WEIGHTS, _CONSTANTS, _SAMPLES, _AOTI = "data/weights/", "data/constants/", "data/sample_inputs/", "data/aotinductor/"
_LEGACY_PICKLES = {"serialized_state_dict.pt", "serialized_constants.pt", "serialized_example_inputs.pt",
                   "serialized_state_dict.json", "serialized_constants.json"}  # torch.export.load's pre-2.8 layout
_PROGRAMS = re.compile(r"models/.+|serialized_exported_program\.json")  # torch parses every file under models/
_CONFIGS = re.compile(r"data/(?:weights/.+_weights|constants/.+_constants)_config\.json")
_PAYLOAD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
# keys of a serialized program whose strings torch writes into the Python code of the graph module
_NAME_KEYS = {"name", "as_name"}  # node, input, output and argument names: placeholders and keywords
_PATH_KEYS = {"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn", "forward_arg_names",
              "target", "class_fqn"}  # get_attr targets (dotted), operator names
_LINE_BREAKS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # \r ends a comment in generated code
# (\n itself passes: FX writes node names into code only after cleaning them to identifiers, and the name
# checks below refuse anything else that reaches generated code.)


def _program_refusal(path, kind: str, entry: str, detail: str = "") -> UnsafeFile:
    fix = "bench opens programs as data: re-export it with plain tensors, or set trust: true on this model if you trust its author"
    if kind == "compiled":
        return UnsafeFile(f"{path}: its archive holds compiled code ({entry}) that would run when loaded; an AOTInductor "
                          "package is not an ExportedProgram and cannot be attacked with gradients: save the program with "
                          "torch.export.save, or set trust: true on this model if you trust its author")
    if kind == "text":
        return UnsafeFile(f"{path}: its archive holds program text that would run code when loaded ({entry}: {detail}); "
                          "bench opens programs as data: re-export it with torch.export.save, or set trust: true on this "
                          "model if you trust its author")
    return UnsafeFile(f"{path}: its archive holds a pickled object ({entry}) that would run code when loaded; {fix}")


def _check_program_text(path, entry: str, doc: Any) -> None:
    """Refuse strings of a serialized program that torch would evaluate or write into generated code."""

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if _LINE_BREAKS.search(str(k)):
                    raise _program_refusal(path, "text", entry, f"the key {_show(str(k))} holds a line break")
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str):
            if _LINE_BREAKS.search(node):
                raise _program_refusal(path, "text", entry, f"the {key} {_show(node)} holds a control character")
            if key == "expr_str":
                problem = sympy_problem(node)
                if problem:
                    raise _program_refusal(path, "text", entry, f"the symbolic expression {_show(node)}: {problem}")
            elif key in _NAME_KEYS and node and not re.fullmatch(r"[A-Za-z0-9_]+", node):
                raise _program_refusal(path, "text", entry, f"the {key} {_show(node)} is not a plain name")
            elif key in _PATH_KEYS and node and not re.fullmatch(r"[A-Za-z0-9_.#:]+", node):
                raise _program_refusal(path, "text", entry, f"the {key} {_show(node)} is not a plain name")

    walk(doc, "")


def scan_exported_program(path: str | Path, data: bytes) -> dict[str, str]:
    """Refuse (:class:`UnsafeFile`) a ``.pt2`` whose loading would run code: every entry
    ``torch.export.load`` unpickles (sample inputs, weights and constants the payload configs mark
    ``use_pickle``, legacy ``.pt`` files, the pre-2.8 ``serialized_*`` files) must load with
    ``weights_only=True``; custom and opaque object constants and AOTInductor code are refused
    outright; program text is checked by :func:`_check_program_text`. Returns SHA-256 → entry name
    of every entry but the raw tensor bytes, so the guard can say which one it stopped. Not a zip:
    nothing to scan (torch's own error follows)."""
    import json

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return {}
    if not infos:
        return {}
    top = infos[0].filename.split("/", 1)[0] + "/" if "/" in infos[0].filename else None

    def relative(name: str) -> str:  # the name torch's archive reader asks for (case-insensitive, as miniz)
        return (name[len(top):] if top and name.startswith(top) else name).lower()

    def read(info: zipfile.ZipInfo) -> bytes | None:
        try:
            return archive.read(info)
        except Exception:  # a damaged entry: torch fails on it too, without running anything
            return None

    pickled: set[str] = set()  # relative names (lower case) of the payloads configs mark use_pickle
    raw: set[str] = set()  # … and of the raw tensor bytes they point at (never unpickled)
    for info in infos:
        rel = relative(info.filename)
        if rel.startswith(_AOTI):
            raise _program_refusal(path, "compiled", info.filename)
        if not (_PROGRAMS.fullmatch(rel) or _CONFIGS.fullmatch(rel)):
            continue
        try:
            doc = json.loads(read(info) or b"")
        except ValueError:
            continue  # torch cannot read it either
        if _PROGRAMS.fullmatch(rel):
            _check_program_text(path, info.filename, doc)
            continue
        folder = _WEIGHTS if rel.startswith(_WEIGHTS) else _CONSTANTS
        config = doc.get("config") if isinstance(doc, dict) else None
        for fqn, meta in (config.items() if isinstance(config, dict) else ()):
            if not isinstance(meta, dict):
                continue
            if not re.fullmatch(r"[A-Za-z0-9_.]*", str(fqn)):
                raise _program_refusal(path, "text", info.filename, f"the weight name {_show(str(fqn))} is not a plain name")
            name = meta.get("path_name")
            if not isinstance(name, str):
                continue
            if not _PAYLOAD_NAME.fullmatch(name) or ".." in name:
                raise _program_refusal(path, "text", info.filename, f"the payload name {_show(name)} is not a file of its folder")
            if folder == _CONSTANTS and name.startswith(("custom_obj_", "opaque_obj_")):
                raise _program_refusal(path, "pickle", (top or "") + folder + name)
            (pickled if meta.get("use_pickle") else raw).add((folder + name).lower())

    names: dict[str, str] = {}
    for info in infos:
        rel = relative(info.filename)
        unpickled = rel in pickled or rel.endswith(".pt") or rel.startswith(_SAMPLES) or rel in _LEGACY_PICKLES
        if rel in raw and not unpickled:
            continue  # the bulk of the weights: read as storage bytes, never unpickled
        body = read(info)
        if body is None:
            continue
        names[hashlib.sha256(body).hexdigest()] = info.filename
        if unpickled and body and not _plain_tensors(body):
            raise _program_refusal(path, "pickle", info.filename)
    return names


# Operators a program may call: tensor arithmetic. Other namespaces hold operators with effects outside the
# tensors (torchvision's image::write_file writes any file; profiler::, c10d:: …), and a few aten operators
# read, write or print files (aten::from_file maps a file shared, so a later fill_ writes into it).
OPERATOR_NAMESPACES = ("aten", "prims")
REFUSED_ATEN = {"from_file", "save", "_print", "warn"}
HIGHER_ORDER_OPS = {"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled", "wrap_with_autocast",
                    "auto_functionalized", "auto_functionalized_v2", "invoke_subgraph", "associative_scan"}


def _operator_problem(target: Any) -> str | None:
    """Why a graph node's operator must not run on data from a file (None when it is plain tensor arithmetic)."""
    import torch

    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        namespace = getattr(target, "namespace", None) or str(target).split(".", 1)[0]
        name = target._schema.name.split("::", 1)[-1] if hasattr(target, "_schema") else str(target).split(".")[1]
        if namespace not in OPERATOR_NAMESPACES:
            return f"it calls {target}, outside torch's tensor operators ({', '.join(OPERATOR_NAMESPACES)})"
        schema = getattr(target, "_schema", None)
        if name in REFUSED_ATEN or (schema is not None and any(a.name in ("filename", "file", "path") for a in schema.arguments)):
            return f"it calls {target}, which reads, writes or prints outside its tensors"
        return None
    if isinstance(target, torch._ops.HigherOrderOperator):
        if target.name() not in HIGHER_ORDER_OPS:
            return f"it calls the higher-order operator {target.name()}, which is not control flow over its own graphs"
        return None
    return f"it calls {_show(str(target))}, which is not a torch operator"


def _check_program(path, program) -> None:
    """After loading, before any of it runs: every operator the graphs call is plain tensor arithmetic
    (:func:`_operator_problem`), and every name bench's own ``.module()`` writes into code is plain."""
    import torch

    try:
        from torch._export.serde.serialize import _SYM_OPS
    except ImportError:
        _SYM_OPS = set()
    builtins = {operator.getitem, *_SYM_OPS}
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op != "call_function" or node.target in builtins:
                continue
            problem = _operator_problem(node.target)
            if problem:
                raise _program_refusal(path, "text", "its graph", problem)
    signature = program.graph_signature
    for spec in list(signature.input_specs) + list(signature.output_specs):
        target = getattr(spec, "target", None)
        if target is not None and not (isinstance(target, str) and _DOTTED.fullmatch(target)):
            raise _program_refusal(path, "text", "its signature", f"the name {_show(str(target))} is not a plain name")


def load_exported_program(path: str | Path):
    """``torch.export.load`` of a file that may come from anyone: scanned first
    (:func:`scan_exported_program`), loaded from the scanned bytes inside :func:`no_code`, checked
    after (:func:`_check_program`). Raises :class:`UnsafeFile` (one line) for what it refuses; torch's
    own exception for a file that is not a program."""
    import torch

    data = Path(path).read_bytes()
    names = scan_exported_program(path, data)
    with no_code(names) as guard:
        try:
            program = torch.export.load(io.BytesIO(data))
        except BaseException:
            if guard.blocked:
                raise _program_refusal(path, *guard.blocked[0]) from None
            raise
    if guard.blocked:  # stopped, and the exception swallowed on the way
        raise _program_refusal(path, *guard.blocked[0])
    if isinstance(program, torch.export.ExportedProgram):
        _check_program(path, program)
    return program
