"""The README and the docs site: they build strictly, their examples run, their images exist, and every measured
figure in them is rendered from a committed results file (docs/render.py), never typed by hand."""
import ast
import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))

import render  # noqa: E402

# Pages the code writes (reports, the Hessian-modes page): they are results files themselves.
GENERATED = {"demo/REPORT.md", "study/REPORT.md", "study-fashion/REPORT.md", "study-width/REPORT.md",
             "study/hessian-modes.md"}
# A number followed by a unit of time, size, rate, ratio or share: a measurement.
MEASUREMENT = re.compile(
    r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s*(?:%|x(?![\w])|s\b|ms\b|sec\b|seconds\b|min\b|minutes\b|h\b|hours?\b|"
    r"[KMGT]i?B\b|images/s\b|img/s\b|[GTP]FLOP(?:s|/s)?\b|GPU[- ]hours\b)")
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def hand_written_pages():
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    pages += [p for p in sorted(DOCS.rglob("*.md")) if str(p.relative_to(DOCS)) not in GENERATED]
    return [p for p in pages if "hessian-modes-results" not in p.parts]


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _without_code_spans(text: str) -> str:
    """Inline code holds settings and definitions (`lr 1e-4`, `95%` intervals), not measurements."""
    return re.sub(r"`[^`\n]+`", "", text)


@pytest.mark.parametrize("page", hand_written_pages(), ids=_name)
def test_no_measurement_is_typed_by_hand(page):
    text = _without_code_spans(render.strip_rendered(page.read_text()))
    found = [m.group(0) for m in MEASUREMENT.finditer(text)]
    assert not found, f"{_name(page)}: measured figures outside the rendered parts: {found[:8]}"


def test_the_measurement_check_catches_what_it_should():
    """The check above would fail on the figures the old README carried, and passes rendered parts."""
    for typed in ("took 7 min 18 s", "9.8x faster", "14.96 GB peak", "dense accuracy 85-98%", "112,873 images/s",
                  "about 20 GPU hours", "27 min on 2 CPU cores"):
        assert MEASUREMENT.search(typed), typed
    for fine in ("32x32 inputs", "k = 1..4", "1/16 width", "6 seeds", "10 epochs", "lr 1e-4", "rate 0.9"):
        assert not MEASUREMENT.search(fine), fine
    page = "before\n<!-- rendered: benchmark:data_loader -->\n| 9.8x | 3 s |\n<!-- /rendered -->\nafter"
    assert not MEASUREMENT.search(render.strip_rendered(page))


def test_the_readme_rendered_parts_are_fresh():
    """The README's rendered parts (its verdict table) equal what the committed results give now."""
    text = (ROOT / "README.md").read_text()
    assert "<!-- rendered: verdicts -->" in text
    assert render.fill(text, keep_markers=True) == text, "run `python docs/render.py README.md`"


def test_the_verdict_table_counts_the_report_rows():
    """Each cell of the verdict table adds up to the rows of its study's claims table (an independent count)."""
    table = render.render_verdicts()
    for label, study in render.VERDICT_STUDIES:
        rows = render.claims_rows(study)
        report = (DOCS / study / "REPORT.md").read_text()
        main_table = report.split("## Does the paper hold?")[1].split("\n## ")[0].split("<details>")[0]
        assert len(rows) == main_table.count("\n| ") - 1
        for family in {r["family"] for r in rows}:
            n = sum(1 for r in rows if r["family"] == family and r["claim"] == "prune_robustness")
            column = f"{label}: {render.FAMILY_LABELS[family]}"
            header = table.splitlines()[0].split(" | ")
            index = [h.strip(" |") for h in header].index(column)
            cells = [line.split(" | ")[index] for line in table.splitlines() if line.startswith("| 2. ")]
            assert len(cells) == 4  # one row per BatchNorm protocol and basis
            assert sum(int(x) for cell in cells for x in re.findall(r"(\d+) \w+", cell)) == n


def test_the_readme_is_a_landing_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 180
    assert len(text.split()) <= 1500
    first = re.findall(r"```bash\n(.*?)```", text, re.S)[0].splitlines()
    assert first[0].startswith("make demo") and first[1].startswith("make test")


def _image_links(page: Path):
    for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
        if not re.match(r"https?://", target):
            yield target


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))], ids=_name)
def test_every_image_link_points_to_a_file(page):
    missing = [t for t in _image_links(page) if not (page.parent / t).is_file()]
    assert not missing, f"{_name(page)}: images that do not exist: {missing}"


def _python_blocks(page: Path):
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == "python"]


def doctest_pages():
    pages = [ROOT / "README.md", *hand_written_pages()]
    return sorted({p for p in pages if any(">>>" in b for b in _python_blocks(p))}, key=_name)


@pytest.mark.parametrize("page", doctest_pages(), ids=_name)
def test_python_examples_run(page):
    """The `>>>` examples of a page run as doctests, in one namespace per page."""
    text = "\n".join(b for b in _python_blocks(page) if ">>>" in b)
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    test = parser.get_doctest(text, {}, _name(page), str(page), 0)
    result = runner.run(test, out=lambda s: print(s, end=""))
    assert test.examples and result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def _static_blocks():
    for page in [ROOT / "README.md", *hand_written_pages()]:
        for index, body in enumerate(_python_blocks(page)):
            if ">>>" not in body:
                yield pytest.param(body, id=f"{_name(page)}[{index}]")


@pytest.mark.parametrize("body", list(_static_blocks()))
def test_examples_that_need_data_or_the_hub_name_real_things(body):
    """Examples that need a GPU, the Hub or a data set are parsed, and what they import and create exists."""
    import importlib

    import timm

    import rf_bench  # noqa: F401

    tree = ast.parse(body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rf_bench"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{node.module} has no {alias.name}"
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "create_model" and node.args
                and isinstance(node.args[0], ast.Constant)):
            name = node.args[0].value.split(".")[0]
            assert name in timm.list_models(), f"no model {name}"
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "data"):
            from rf_bench import data
            assert hasattr(data, node.func.attr), f"rf_bench.data has no {node.func.attr}"


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: no broken link, missing page or unresolved API reference; the API page of the
    Hessian probe and a probe page with its figure are there."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", DISABLE_MKDOCS_2_WARNING="true")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hessian_api = (site / "reference/api/rf_bench.probes.hessian.html").read_text()
    assert "hessian_eigenvalues" in hessian_api and "thick_restart_lanczos" in hessian_api
    prune = (site / "concepts/prune.html").read_text()
    assert "prune_vgg19_rfpool_digits.png" in prune and (site / "demo/prune_vgg19_rfpool_digits.png").is_file()
    assert "<!-- rendered:" not in (site / "benchmarks.html").read_text()
    cli = (site / "reference/cli.html").read_text()
    for command in ("rf-bench train", "rf-bench probe", "rf-bench study", "rf-bench claims"):
        assert command in cli
    assert cli.count("<th>argument</th>") == cli.count('<h2 id="rf-bench-') > 5  # a table of arguments per command
    rf_api = (site / "reference/api/rf_bench.rf.html").read_text()
    assert "global_context" in rf_api and "the jump" in rf_api  # RF's fields are documented
    # opened from disk (file://), every link of the navigation names a page, not a folder
    home = (site / "index.html").read_text()
    links = re.findall(r'<a href="([^"#][^"]*)" class="md-nav__link', home)
    assert links and all(link.endswith(".html") for link in links), [x for x in links if not x.endswith(".html")]


def test_public_names_have_docstrings():
    """interrogate's docstring coverage of rf_bench's public names meets pyproject's fail-under (90%)."""
    proc = subprocess.run([sys.executable, "-m", "interrogate", "-c", "pyproject.toml", "rf_bench"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "PASSED" in proc.stdout


def test_a_study_table_shows_cpu_time_and_busy_cores_where_measured(monkeypatch):
    facts = {"runs": 4, "jobs": 2, "wall_s": 3600.0, "cpu_s": 5400.0, "machine": "m", "finished": "2026-01-01 00:00"}
    monkeypatch.setattr(render, "study_facts", lambda study: facts)
    assert "| CPU time of its processes | 5,400 s (90.0 min), 1.50 cores busy on average |" in render.render_study("x")
    monkeypatch.setattr(render, "study_facts", lambda study: {k: v for k, v in facts.items() if k != "cpu_s"})
    assert "| CPU time of its processes | not measured |" in render.render_study("x")


def test_a_study_table_says_which_runs_its_times_cover(monkeypatch):
    """A study whose first timed invocation found runs done says how many its wall and CPU times leave out."""
    facts = {"runs": 32, "jobs": 2, "wall_s": 600.0, "invocations": [{"runs_done_before": 12, "wall_s": 600.0}]}
    monkeypatch.setattr(render, "study_facts", lambda study: facts)
    assert "| wall time, first run to report | 600 s (10.0 min), for 20 of the 32 runs (12 ran untimed) |" in \
        render.render_study("x")
    facts["invocations"] = [{"runs_done_before": 0, "wall_s": 500.0}, {"runs_done_before": 12, "wall_s": 100.0}]
    assert "| wall time, first run to report | 600 s (10.0 min) |" in render.render_study("x")  # every run timed


PRUNE_CSV_HEAD = "family,dataset,bn,k,rf_analytic,rf_paper,rate,metric,mean,std,n\n"


def _prune_csv(path: Path, rows) -> None:
    """A pruning CSV as the report writes it: rows of (bn, k, rate, metric, mean)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PRUNE_CSV_HEAD + "".join(f"vgg19_rfpool,digits,{bn},{k},180,181,{rate},{metric},{mean},0.01,2\n"
                                             for bn, k, rate, metric, mean in rows))


def test_the_finetune_table_sets_fine_tuned_beside_recalibrated_one_shot(tmp_path, monkeypatch):
    """One row per (family, width, rate, k) that has all three numbers, and the largest gaps over the rows."""
    monkeypatch.setattr(render, "DOCS", tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "REPORT.md").write_text("From `results`, 2026-01-01 00:00.\n")
    assert render.render_finetune("s") == "not measured"
    for width, shift in (("0.125", 0.0), ("0.25", 0.02)):
        _prune_csv(tmp_path / "s" / f"prune-width_mult={width}" / "prune.csv", [
            ("stored", 1, 0.9, "pruned", 0.10), ("stored", 1, 0.9, "finetuned", 0.50 + shift),
            ("recalibrate", 1, 0.9, "pruned", 0.55), ("recalibrate", 1, 0.9, "finetuned", 0.56 - shift),
            ("recalibrate", 2, 0.9, "pruned", 0.60)])  # k = 2 was not fine-tuned: no row
    text = render.render_finetune("s")
    assert "| VGG19 | 0.125 | 0.9 | 1 | 55.0 | 50.0 | 56.0 |" in text
    assert "| VGG19 | 0.25 | 0.9 | 1 | 55.0 | 52.0 | 54.0 |" in text and "| 2 |" not in text
    assert "5.0 points fine-tuned with the statistics the fine-tune left, 1.0 points fine-tuned and recalibrated" \
        in text


def test_the_width_table_gains_come_from_unrounded_means(tmp_path, monkeypatch):
    """The per-row gain and the table of gains below it agree: both from the means, not the rounded cells."""
    monkeypatch.setattr(render, "DOCS", tmp_path)
    study = tmp_path / "w"
    study.mkdir()
    (study / "REPORT.md").write_text("From `results`, 2026-01-01 00:00.\n")
    rows = [(1, 0.1004), (3, 0.2008), (4, 0.2008)]  # cells 10.0 / 20.1 / 20.1: 10.1 apart, the means 10.04
    (study / "width.csv").write_text("family,width_mult,bn,k,rate,metric,mean,std,n\n" + "".join(
        f"vgg19_rfpool,0.25,stored,{k},0.9,pruned,{mean},0.0,2\n" for k, mean in rows))
    text = render.render_width("w")
    row = "| VGG19 | 0.25 | pruned 0.9, one-shot, BN stored | 10.0 ± 0.0 | 20.1 ± 0.0 | 20.1 ± 0.0 | +10.0 points |"
    assert row in text
    assert "| VGG19 | 0.25 | stored | +10.0 |" in text


def test_no_code_block_line_is_over_100_characters():
    """Code blocks do not wrap on the site: a longer line is cut off at the column's edge."""
    long = []
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        if "results" in page.parts:
            continue
        for block in re.findall(r"```[^\n]*\n(.*?)```", page.read_text(), re.S):
            long += [f"{page.relative_to(ROOT)}: {line[:60]}..." for line in block.splitlines() if len(line) > 100]
    assert long == []


def test_the_python_version_is_stated_alike_everywhere():
    import tomllib

    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    version = required.removeprefix(">=")
    assert re.fullmatch(r"3\.\d+", version), required
    for page in (ROOT / "README.md", DOCS / "installation.md"):
        stated = set(re.findall(r"Python (3\.\d+)( or newer)?", page.read_text()))
        assert stated == {(version, " or newer")}, (page.name, stated)
