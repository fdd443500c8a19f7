"""The ``file`` source: ``file: model.pt2``, a ``torch.export`` ExportedProgram saved with
``torch.export.save`` (the path is relative to the suite file's folder, or absolute).

Export it from the model in eval mode, with a dynamic batch dimension, taking normalised images::

    model.eval()
    program = torch.export.export(model, (torch.rand(2, 3, 224, 224),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})  # "x": forward's argument
    torch.export.save(program, "model.pt2")

Requirements, checked when the suite is loaded (``--dry-run`` too): one input, (N, 3, H, W), with N
dynamic (attacks run batches of any size, the last one smaller) and H == W == input_size where the
program fixed them; logits (N, classes) out; exported in eval mode (no BatchNorm batch statistics,
no live dropout); differentiable with respect to its input (a forward and backward of two images
runs). An AOTInductor package (``.pt2`` from ``aoti_compile_and_package``) is not an ExportedProgram
and cannot be attacked with gradients.

Preprocessing: for each of ``mean``, ``std``, ``input_size``, ``num_classes``, ``class_names``,
``interpolation`` and ``crop_pct`` the first of these that has it wins:

1. the suite entry;
2. the card beside the program, ``model.json`` for ``model.pt2``: the JSON that ``bench train``
   writes beside a checkpoint (its ``classes`` are the class names), or any JSON object with some of
   these keys;
3. the program itself: ``input_size`` from a static H == W, ``num_classes`` from a static class
   dimension of its output.

``mean`` and ``std`` have no other place than 1 and 2. An ``input_size`` or ``num_classes`` that
contradicts the program's static shapes is an error. A ``checkpoint:`` is refused: the program carries
its weights.

The network bench attacks is ``program.module()`` in a small wrapper (:class:`ExportedModel`): the
graph's train/eval mode was fixed at export, so ``train()``/``eval()`` set only the wrapper's flag,
and every module inside reports ``training = False``.

Opened as data. ``torch.export.load`` unpickles parts of the archive — sample inputs, weights and
constants saved with pickle, custom and opaque objects — and evaluates its symbolic shape expressions
and node names as Python, so a ``.pt2`` can run any code when it is loaded (torch's own documentation:
never load one from an untrusted source). bench loads programs at suite validation, ``--dry-run``
included, so it opens them as data (:func:`bench.untrusted.load_exported_program`): the archive is
scanned first — every entry torch would unpickle must hold only tensors (``torch.load(weights_only=True)``
loads it; a normal export's are such), custom/opaque objects and AOTInductor code are refused, program
text must be plain names and shape expressions — and then loaded under a guard that keeps anything the
scan did not foresee from running code (``torch.load`` held to ``weights_only=True``, pickle refused).
What is refused is one line naming the file and the entry. ``trust: true`` in the model entry (a
program whose author you trust, e.g. one with tensor subclasses) loads it with plain
``torch.export.load``, as torch does.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn as nn

from bench.models import CheckpointError, short_error
from bench.sources.factory import Layer, card_fields, preprocessing
from bench.untrusted import UnsafeFile, load_exported_program

if TYPE_CHECKING:
    from bench.sources import Context
    from bench.specs import ModelSpec

NAME = "file"
KEYS = ("file", "trust")

_TRAINING_OPS = {  # op name → index of its ``training`` argument
    "aten.batch_norm.default": 5,
    "aten.native_batch_norm.default": 5,
    "aten._native_batch_norm_legit_functional.default": 5,
    "aten._native_batch_norm_legit.default": 5,
    "aten.dropout.default": 2,
    "aten.feature_dropout.default": 2,
    "aten.alpha_dropout.default": 2,
    "aten.feature_alpha_dropout.default": 2,
    "aten.native_dropout.default": 2,
}


def claims(entry: dict[str, Any]) -> bool:
    return "file" in entry and "factory" not in entry


def card_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def read_card(path: Path) -> dict[str, Any]:
    """The card beside a program ({} when there is none); raises ValueError for a bad one."""
    card = card_path(path)
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"the card {card} is not valid JSON ({short_error(exc)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"the card {card} must be a JSON object, got {type(data).__name__}")
    return data


@contextlib.contextmanager
def _quiet_export_log() -> Iterator[None]:
    """torch.export.load logs a traceback before it raises (its deserializer, too, when a payload
    needs more than weights_only); the message we raise says it in one line."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def load_program(path: str | Path, trust: bool = False):
    """The ExportedProgram in a file, loaded on the CPU: opened as data (raises
    :class:`~bench.untrusted.UnsafeFile` for a file whose loading would run code) unless ``trust``."""
    with _quiet_export_log(), torch.device("cpu"):
        if trust:
            return torch.export.load(str(path))
        return load_exported_program(path)


def trusted(spec: "ModelSpec") -> bool:
    """Whether the suite entry said ``trust: true`` (carried in the spec's kwargs)."""
    return bool(dict(spec.kwargs).get("trust", False))


# ---------------------------------------------------------------------------------------------
# The source's surface


def resolve(entry: dict[str, Any], ctx: "Context") -> dict[str, Any]:
    value = entry.get("file")
    if not isinstance(value, str) or not value.strip():
        ctx.error("file", f"must be the path of a torch.export program (.pt2), got {value!r}")
    if "checkpoint" in entry:
        ctx.error("checkpoint", "an exported program carries its own weights; give file: alone (re-export to change them)")
    trust = entry.get("trust", False)
    if not isinstance(trust, bool):
        ctx.error("trust", f"must be true or false (true: load the program with torch.export.load as it is, running "
                           f"what it holds; only for a file whose author you trust), got {trust!r}")
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else Path(ctx.base) / path).resolve()
    if not path.is_file():
        ctx.error("file", f"file not found: {path}")
    try:
        card = read_card(path)
    except ValueError as exc:
        ctx.error("file", str(exc))
    try:
        program = load_program(path, trust)
    except UnsafeFile as exc:
        ctx.error("file", str(exc))
    except Exception as exc:  # a zip that is not a program, an AOTInductor package, a newer format …
        ctx.error("file", f"{path} cannot be loaded as a torch.export program ({type(exc).__name__}: {short_error(exc)}); "
                          "save one with torch.export.save(torch.export.export(model.eval(), (x,), dynamic_shapes=...), path)")
    if not isinstance(program, torch.export.ExportedProgram):
        ctx.error("file", f"{path} holds a {type(program).__name__}, not a torch.export ExportedProgram")

    name, shape = _input(program, ctx)
    hint = f'torch.export.export(model.eval(), (x,), dynamic_shapes={{"{name}": {{0: torch.export.Dim("batch")}}}})'
    batch = shape[0]
    if isinstance(batch, int):
        ctx.error("file", f"the program's batch dimension is fixed at {batch}: bench runs batches of any size; "
                          f"re-export it with a dynamic batch: {hint}")
    low = _lower_bound(program, batch)
    if low is not None and low > 1:
        ctx.error("file", f"the program's batch dimension starts at {low}: bench runs batches down to 1; re-export it "
                          f"with dynamic_shapes={{\"{name}\": {{0: torch.export.Dim(\"batch\", min=1)}}}}")
    if not isinstance(shape[1], int) or shape[1] != 3:
        ctx.error("file", f"the program's input {name} has {shape[1]} channels (shape {_show(shape)}); "
                          "bench feeds RGB images (N, 3, H, W)")
    h, w = shape[2], shape[3]
    static = isinstance(h, int) and isinstance(w, int)
    if static and h != w:
        ctx.error("file", f"the program takes {h}×{w} images; bench feeds square crops (H == W): re-export it at a square size")
    classes = _classes(program, ctx)

    own = {}
    if static:
        own["input_size"] = h
    if classes is not None:
        own["num_classes"] = classes
    layers = [Layer("the suite entry", "", entry), Layer(f"the card {card_path(path).name}", "file", card_fields(card)),
              Layer("the program's shapes", "file", own)]
    card_name = card_path(path)

    def fits(fields: dict[str, Any]) -> None:
        if static and fields["input_size"] != h:
            ctx.error("input_size", f"{fields['input_size']} does not fit the program, exported for {h}×{w} images "
                                    "(re-export it with dynamic H and W, or at this size)")
        if classes is not None and fields["num_classes"] != classes:
            ctx.error("num_classes", f"{fields['num_classes']} does not fit the program, which returns {classes} logits")

    fields = preprocessing(layers, ctx, lambda f: f"give {f}: in the suite entry or in the card {card_name} (a JSON "
                                                  f'object such as {{"mean": [...], "std": [...], "input_size": ..., '
                                                  f'"num_classes": ...}})', fits)
    _check_eval_mode(program, ctx)
    _check_gradients(program, fields["input_size"], ctx)
    return {"arch": str(path), "weights": None, "kwargs": (("trust", True),) if trust else (), **fields}


def files(spec: "ModelSpec") -> list[str]:
    """The program file itself."""
    return [spec.arch]


def build(spec: "ModelSpec") -> nn.Module:
    """The program's module, wrapped (see :class:`ExportedModel`), on the CPU — or moved to the meta
    device when built under ``torch.device("meta")`` (the probe): loading itself needs real storage."""
    on_meta = torch.empty(()).device.type == "meta"
    try:
        program = load_program(spec.arch, trusted(spec))
    except UnsafeFile as exc:  # the file changed since the suite was checked: the cell fails with this line
        raise CheckpointError(str(exc)) from None
    model = ExportedModel(program.module())
    return model.to("meta") if on_meta else model


def defaults(spec: "ModelSpec") -> dict[str, Any]:
    """mean/std/class names for a spec made in code (not resolved from a suite): the card's."""
    card = card_fields(read_card(Path(spec.arch)))
    names = card.get("class_names")
    return {"mean": tuple(card["mean"]) if "mean" in card else None, "std": tuple(card["std"]) if "std" in card else None,
            "class_names": tuple(names) if names else None}


# ---------------------------------------------------------------------------------------------
# The wrapper bench attacks


class ExportedModel(nn.Module):
    """``program.module()`` as an ordinary eval-mode network.

    An exported graph's mode was fixed at export, and its ``train()``/``eval()`` raise
    NotImplementedError; here they set only this wrapper's flag, and every module of the graph says
    ``training = False``, which is what it computes. Tensor constants the graph holds as plain
    attributes become (non-persistent) buffers, so ``.to(device)`` moves them with the weights, and
    ``aten.view`` becomes ``aten.reshape`` (the same values), so channels-last inputs work.
    """

    def __init__(self, graph: nn.Module):
        super().__init__()
        _constants_to_buffers(graph)
        _views_to_reshapes(graph)
        self.graph = graph
        for m in graph.modules():
            m.training = False
        self.training = False

    def train(self, mode: bool = True) -> "ExportedModel":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


def _constants_to_buffers(graph: nn.Module) -> None:
    for module in graph.modules():
        named = {n for n, _ in module.named_parameters(recurse=False)} | {n for n, _ in module.named_buffers(recurse=False)}
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and name not in named and not name.startswith("__"):
                delattr(module, name)
                module.register_buffer(name, value, persistent=False)


def _views_to_reshapes(graph: nn.Module) -> None:
    view, reshape = torch.ops.aten.view.default, torch.ops.aten.reshape.default
    for module in graph.modules():
        if isinstance(module, torch.fx.GraphModule):
            changed = False
            for node in module.graph.nodes:
                if node.op == "call_function" and node.target is view:
                    node.target = reshape
                    changed = True
            if changed:
                module.recompile()


# ---------------------------------------------------------------------------------------------
# Checks


def _show(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _input(program, ctx: "Context") -> tuple[str, tuple]:
    """The name and shape of the program's one input (a SymInt where a dimension is dynamic)."""
    names = list(program.graph_signature.user_inputs)
    if len(names) != 1:
        ctx.error("file", f"the program takes {len(names)} inputs ({', '.join(map(str, names)) or 'none'}); "
                          "bench needs exactly one, the image batch (N, 3, H, W)")
    node = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0]), None)
    val = node.meta.get("val") if node is not None else None
    if not isinstance(val, torch.Tensor):
        ctx.error("file", f"the program's input {names[0]} is not a tensor; bench needs the image batch (N, 3, H, W)")
    shape = tuple(val.shape)  # ints where static, SymInts where dynamic
    if len(shape) != 4:
        ctx.error("file", f"the program's input {names[0]} has shape {_show(shape)}; bench needs an image batch (N, 3, H, W)")
    return names[0], shape


def _lower_bound(program, dim) -> int | None:
    try:
        vr = program.range_constraints.get(dim.node.expr)
        return int(vr.lower) if vr is not None else None
    except Exception:  # an expression, not a plain symbol, or an older torch: the probe will tell
        return None


def _classes(program, ctx: "Context") -> int | None:
    """The static class count of the program's (first) output, when it has one."""
    out = next((n for n in program.graph.nodes if n.op == "output"), None)
    args = out.args[0] if out is not None and out.args else ()
    first = args[0] if isinstance(args, (list, tuple)) and args else args
    val = getattr(first, "meta", {}).get("val") if first is not None else None
    if not isinstance(val, torch.Tensor):
        return None
    if val.dim() != 2:
        ctx.error("file", f"the program returns shape {_show(val.shape)}; bench needs logits (N, classes)")
    k = val.shape[1]
    return int(k) if isinstance(k, int) else None


def _check_eval_mode(program, ctx: "Context") -> None:
    live = set()
    graphs = [m.graph for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)]
    for node in (n for g in graphs for n in g.nodes):
        if node.op != "call_function":
            continue
        index = _TRAINING_OPS.get(str(node.target))
        if index is None:
            continue
        training = node.args[index] if len(node.args) > index else node.kwargs.get("training", node.kwargs.get("train"))
        if training is True:
            live.add("dropout" if "dropout" in str(node.target) else "BatchNorm batch statistics")
    if live:
        ctx.error("file", f"the program was exported in training mode ({', '.join(sorted(live))}): "
                          "re-export it from model.eval()")
    mutated = list(program.graph_signature.buffers_to_mutate.values())
    if mutated:
        ctx.error("file", f"the program updates its buffers on every call ({', '.join(mutated[:4])}): bench needs a "
                          "stateless network; re-export it from model.eval()")


def _check_gradients(program, size: int, ctx: "Context") -> None:
    """A forward and backward of two images: attacks need the gradient with respect to the input."""
    advice = "re-export it from a model in eval mode without torch.no_grad / inference_mode"
    try:
        net = ExportedModel(program.module())
        net.requires_grad_(False)
    except Exception as exc:
        ctx.error("file", f"the program cannot be turned into a module ({type(exc).__name__}: {short_error(exc)})")
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        x = torch.rand(2, 3, size, size, requires_grad=True)
        try:
            out = net(x)
        except Exception as exc:
            ctx.error("file", f"a 2×3×{size}×{size} batch fails: {type(exc).__name__}: {short_error(exc)}")
        if isinstance(out, (tuple, list)) and out:
            out = out[0]
        if not isinstance(out, torch.Tensor):
            ctx.error("file", f"the program returns {type(out).__name__}; bench needs logits (N, classes)")
        if not out.requires_grad:
            ctx.error("file", f"this exported program cannot be differentiated (its output does not depend on the "
                              f"input through autograd): {advice}")
        try:
            (grad,) = torch.autograd.grad(out.float().sum(), x, allow_unused=True)
        except Exception as exc:
            ctx.error("file", f"this exported program cannot be differentiated ({type(exc).__name__}: "
                              f"{short_error(exc)}): {advice}")
        if grad is None:
            ctx.error("file", f"this exported program cannot be differentiated (no gradient reaches the input): {advice}")
