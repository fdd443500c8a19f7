"""The documentation cannot drift from the code: docs/suite-reference.md is what `make docs` writes from the
registries, every key it documents is one the registries accept (and the reverse, read independently: keys parsed
out of the markdown against keys collected from the registries), and every relative link in README.md and docs/
points at a file, and a heading, that exist."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "suite-reference.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.fixture(scope="module")
def rendered() -> str:
    from bench import reference

    return reference.render()


@pytest.fixture(scope="module")
def documented() -> dict[tuple[str, str], set[str]]:
    return documented_keys(REFERENCE.read_text(encoding="utf-8"))


# --- (a) the committed file is the generated one ----------------------------------------------------


def test_the_committed_reference_is_what_make_docs_writes(rendered):
    committed = REFERENCE.read_text(encoding="utf-8")
    if committed != rendered:
        old, new = committed.splitlines(), rendered.splitlines()
        first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        pytest.fail(f"docs/suite-reference.md is not what the code generates (first difference at line {first + 1}): "
                    "run `make docs` (python -m bench.reference > docs/suite-reference.md) and commit the result")


def test_the_reference_regenerates_from_the_command_line():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "bench.reference"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == REFERENCE.read_text(encoding="utf-8"), "run `make docs`"


# --- (b) documented keys = accepted keys ------------------------------------------------------------


def _plain(heading: str) -> str:
    return heading.replace("`", "").strip().lower()


def _section(heading: str | None) -> str:
    """An h3's registry name: its first `code` (``source: x`` → x), or ``common`` for "Keys every … takes"."""
    if heading is None:
        return ""
    if heading.startswith("Keys every"):
        return "common"
    code = re.search(r"`([^`]+)`", heading)
    return code.group(1).removeprefix("source: ") if code else heading


def documented_keys(markdown: str) -> dict[tuple[str, str], set[str]]:
    """(h2, h3 name) → the keys in the first column of its table; every h3 appears, if only with no keys."""
    out: dict[tuple[str, str], set[str]] = {}
    h2, h3, fenced = "", "", False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        if line.startswith("## "):
            h2, h3 = _plain(line[3:]), ""
            out.setdefault((h2, h3), set())
        elif line.startswith("### "):
            h3 = _section(line[4:])
            out.setdefault((h2, h3), set())
        else:
            cell = re.match(r"\| `([^`]+)` \|", line)
            if cell:
                out[(h2, h3)].add(cell.group(1))
    return out


def sections(doc: dict[tuple[str, str], set[str]], h2: str) -> set[str]:
    return {h3 for (a, h3) in doc if a == h2 and h3 not in ("", "common")}


def same(documented: set[str], accepted: set[str], where: str) -> None:
    extra, missing = sorted(documented - accepted), sorted(accepted - documented)
    assert not extra and not missing, (
        f"{where}: documented but not accepted: {extra}; accepted but not documented: {missing}. Run `make docs`; "
        "a new key with no text in bench/reference.py needs one there first")


def test_top_level_keys(documented):
    from bench.suite import TOP_KEYS

    same(documented[("top level", "")], set(TOP_KEYS), "top level")


def test_data_keys_per_source(documented):
    from bench import data

    assert sections(documented, "data") == set(data.SOURCES)
    common = documented[("data", "common")]
    for name, info in data.SOURCES.items():
        # what bench.data.parse lets through for this source: the shared keys (path and split only where the
        # source has them), its path key, its required keys and its options
        accepted = set(data.COMMON_KEYS) - {"path", "split"}
        accepted |= {info.path_key} if info.needs_path else set()
        accepted |= {"split"} if info.splits != () else set()
        accepted |= set(info.required) | set(info.options)
        same(common | documented[("data", name)], accepted, f"data (source: {name})")


def test_model_keys_per_source(documented):
    from bench import sources

    assert sections(documented, "models") == set(sources.SOURCES)
    common = documented[("models", "common")]
    same(common, set(sources.COMMON_KEYS), "models (every source)")
    for name, module in sources.SOURCES.items():
        same(common | documented[("models", name)], set(sources.COMMON_KEYS) | set(module.KEYS), f"models ({name})")


def test_attack_keys(documented):
    from bench import attacks
    from bench.attacks import autoattack_attacks, python_attacks
    from bench.attacks.sgd import SGD

    assert set(attacks.SOURCES) <= sections(documented, "attacks")
    same(documented[("attacks", "common")], set(attacks.COMMON_KEYS), "attacks (every source)")
    same(documented[("attacks", "python")], set(python_attacks.KEYS), "attacks (python)")
    authors = {k for v in autoattack_attacks.VERSIONS for k in autoattack_attacks._info(v).params} - {"eps"}
    same(documented[("attacks", "autoattack")], authors, "attacks (autoattack)")
    sgd = set(list(inspect.signature(SGD.__init__).parameters)[2:])
    same(documented[("attacks", "sgd")], sgd, "attacks (sgd)")


def test_defense_keys_per_type(documented):
    from bench.defenses import DEFENSES

    assert sections(documented, "defenses") == set(DEFENSES)
    for name, info in DEFENSES.items():
        same(documented[("defenses", name)], {p.name for p in info.params}, f"defenses ({name})")


def test_executor_and_rule_keys(documented):
    from bench import executors
    from bench.suite import RULE_KEYS

    same(documented[("executor", "")], set(executors.KEYS), "executor")
    same(documented[("include and exclude", "")], set(RULE_KEYS), "include/exclude")


def test_a_key_missing_from_the_reference_is_caught():
    from bench.defenses import DEFENSES

    text = REFERENCE.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `quality` |"))
    doc = documented_keys(text.replace(row + "\n", ""))
    with pytest.raises(AssertionError, match=r"accepted but not documented: \['quality'\]"):
        same(doc[("defenses", "jpeg")], {p.name for p in DEFENSES["jpeg"].params}, "defenses (jpeg)")


# --- (c) links --------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    out: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} (.*)", line)
        if heading and not fenced:
            base = slug(heading.group(1))
            name, k = base, 0
            while name in out:  # a repeated heading gets -1, -2, …
                k += 1
                name = f"{base}-{k}"
            out.add(name)
    return out


def links(page: Path) -> list[str]:
    out, fenced = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            line = re.sub(r"`[^`]*`", "code", line)  # code spans are not links (a link's text may be one)
            out += re.findall(r"\]\(([^)\s]+)\)", line)
    return out


def test_the_slugs_are_githubs():
    assert slug("Scaling out: `--executor ray`") == "scaling-out---executor-ray"
    assert slug("A first notebook call: `bench.run`") == "a-first-notebook-call-benchrun"
    assert slug("RobustBench's protocol: `bench robustbench`") == "robustbenchs-protocol-bench-robustbench"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_stays_short_and_links_every_guide():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    for guide in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{guide.name}" in readme, f"README.md does not link docs/{guide.name}"
