"""The docs agree with the code. The reference pages (docs/reference/) are what `make docs` writes
now; every name a page of docs/ or the README mentions exists: `make` targets, `python -m`
modules and their flags, environment variables, chart value paths, metric names, file paths, the
links; the chart values the options reference names are what `helm template` puts in the
containers; one set of Kubernetes/kubectl versions; the V2 contract page matches the codec."""
from __future__ import annotations

import functools
import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.support.cluster_files import versions
from tests.support.helm import CHART, containers, pod_views, render, run
from tests.support.servers import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gen_docs

PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
OURS = ("rakuten_common", "training_job", "model_server")


def rel(path) -> str:
    return str(path.relative_to(REPO))


# -- reading the docs ------------------------------------------------------------------------------
@functools.cache
def code_of(path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(lines of the fenced code blocks, with `\\` continuations joined; inline code spans)."""
    text = path.read_text()
    blocks, spans = [], []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        blocks += re.sub(r"\\\n\s*", " ", block).splitlines()
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", prose)
    return tuple(blocks), tuple(spans)


def snippets():
    """(page, a code line or span) of every page."""
    for page in PAGES:
        blocks, spans = code_of(page)
        for snippet in (*blocks, *spans):
            yield page, snippet


def words(snippet: str) -> list[str]:
    """Shell words of a snippet, up to a comment."""
    try:
        return shlex.split(snippet, comments=True)
    except ValueError:  # an unbalanced quote in a sample (e.g. JSON): plain split
        return snippet.split("#")[0].split()


def commands(snippet: str):
    """The simple commands of a snippet (split at |, ;, &&, ||, &, $(...))."""
    current: list[str] = []
    for word in words(snippet):
        if word in ("|", ";", "&&", "||", "&") or word.startswith("$("):
            if current:
                yield current
            current = [] if not word.startswith("$(") else [word[2:]]
            continue
        current.append(word)
    if current:
        yield current


# -- reference pages -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(gen_docs.PAGES))
def test_generated_reference_page_is_up_to_date(name):
    path = REPO / "docs" / "reference" / name
    assert path.exists(), f"docs/reference/{name} is missing: run `make docs`"
    assert path.read_text() == gen_docs.PAGES[name](), f"docs/reference/{name} is out of date: run `make docs`"


def test_every_option_of_the_four_commands_is_in_the_options_reference():
    page = (REPO / "docs" / "reference" / "options.md").read_text()
    for command in gen_docs.COMMANDS:
        rows = gen_docs.option_rows(command)
        assert rows, command.prog
        section = page.split(f"## {command.title}\n", 1)[1].split("\n## ", 1)[0]
        for row in rows:
            assert f"| `{row.flag}` | {' / '.join(f'`{e}`' for e in row.env) or '—'} | `{row.default}` |" in section, \
                f"{command.prog} {row.flag}: not in docs/reference/options.md: run `make docs`"


# -- make targets ----------------------------------------------------------------------------------------
@functools.cache
def make_targets() -> set[str]:
    makefiles = [REPO / "Makefile", *sorted((REPO / "mk").glob("*.mk"))]
    return {m.group(1) for path in makefiles for m in re.finditer(r"^([a-zA-Z0-9_.-]+):", path.read_text(), re.M)}


def test_make_targets_named_in_the_docs_exist():
    missing = []
    for page, snippet in snippets():
        for words_ in commands(snippet):
            if words_[0] != "make":
                continue
            for word in words_[1:]:
                if "=" in word or word.startswith("-"):
                    continue
                if word not in make_targets():
                    missing.append(f"{rel(page)}: make {word}")
    assert not missing, missing


# -- python -m modules and their flags -------------------------------------------------------------------
def python_commands():
    """(page, module, the words after it) of every `python -m module ...` in a page's code."""
    for page, snippet in snippets():
        for words_ in commands(snippet):
            for i, word in enumerate(words_[:-2]):
                if re.fullmatch(r"(\S*/)?python(3(\.\d+)?)?", word) and words_[i + 1] == "-m":
                    yield page, words_[i + 2], words_[i + 3:]


@functools.cache
def help_flags(module: str) -> frozenset[str]:
    """The flags `python -m module --help` lists (our commands answer --help without heavy imports)."""
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert done.returncode == 0, f"python -m {module} --help: {done.stderr[-2000:]}"
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", done.stdout))


@pytest.mark.process
def test_python_modules_named_in_the_docs_exist_with_their_flags():
    problems = []
    for page, module, rest in python_commands():
        if importlib.util.find_spec(module) is None:
            problems.append(f"{rel(page)}: python -m {module}: no such module")
            continue
        if module.split(".")[0] not in OURS:
            continue
        for word in rest:
            flag = word.split("=", 1)[0]
            if flag.startswith("--") and re.fullmatch(r"--[a-z][a-z0-9_-]*", flag) and flag not in help_flags(module):
                problems.append(f"{rel(page)}: python -m {module} {flag}: no such flag")
    assert not problems, problems


@pytest.mark.process
def test_server_flags_named_in_prose_exist():
    """A snake_case flag in a code span is the server's (model_server's flags follow KServe's names)."""
    server = help_flags("model_server")
    unknown = sorted({f"{rel(page)}: {flag}" for page, snippet in snippets()
                      for flag in re.findall(r"(?<![\w-])(--[a-z]+(?:_[a-z0-9]+)+)\b", snippet) if flag not in server})
    assert not unknown, unknown


def test_console_scripts_are_documented_and_point_at_commands():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    guide = (REPO / "docs" / "getting-started.md").read_text()
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        shown = module.removesuffix(".__main__")
        assert f"`{name}` (`python -m {shown}`)" in guide, f"{name} (pyproject.toml) is not in docs/getting-started.md"
        assert hasattr(importlib.import_module(module), function), target


# -- environment variables ------------------------------------------------------------------------------
CODE_FILES = ("*.py", "Makefile", "*.mk", "*.tpl", "*.yaml", "*.yml", "*.sh", "Dockerfile", "*.env", "*.conf", "run")
#: Variables of other tools that the docs tell users to set.
EXTERNAL_ENV = {"PIP_CERT", "KUBECONFIG"}


@functools.cache
def code_corpus() -> str:
    paths = set()
    for pattern in CODE_FILES:
        paths |= {p for p in REPO.rglob(pattern) if not {".venv", ".tools", "node_modules", ".git"} & set(p.parts)
                  and "docs" not in p.relative_to(REPO).parts[:1]}
    return "\n".join(p.read_text(errors="replace") for p in sorted(paths) if p.is_file())


def test_environment_variables_named_in_the_docs_are_read_somewhere():
    corpus = code_corpus()
    unknown = set()
    for page, snippet in snippets():
        for name in re.findall(r"(?<![\w./{<-])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?![\w.(/-])", snippet):
            if name not in EXTERNAL_ENV and not re.search(rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])", corpus):
                unknown.add(f"{rel(page)}: {name}")
    assert not unknown, sorted(unknown)


# -- chart values ----------------------------------------------------------------------------------------
VALUES = yaml.safe_load((REPO / "charts" / "rakuten-serving" / "values.yaml").read_text())
FILE_SUFFIX = re.compile(r"\.(py|ya?ml|json|md|txt|csv|sh|tpl|keras|db|png|svg|log|jpg|npy|env|toml|io|svc|local)$")


def value_exists(path: str) -> bool:
    node = VALUES
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_chart_value_paths_named_in_the_docs_exist():
    tops = "|".join(sorted(VALUES, key=len, reverse=True))
    missing = set()
    for page, snippet in snippets():
        for match in re.finditer(rf"(?<![\w./-])((?:{tops})(?:\.[A-Za-z0-9_-]+)+)(\.\*)?", snippet):
            path = match.group(1)
            if FILE_SUFFIX.search(path) or snippet[match.end():match.end() + 1] in ("/", "("):
                continue
            if not value_exists(path):
                missing.add(f"{rel(page)}: {path}")
    assert not missing, sorted(missing)


# -- metrics -------------------------------------------------------------------------------------------------
def test_metric_names_named_in_the_docs_are_exported():
    exported = {name for rows in gen_docs.metric_rows().values() for name, *_ in rows}
    known = exported | {f"{n}{s}" for n in exported for s in ("_bucket", "_sum", "_count")}
    unknown = set()
    for page, snippet in snippets():
        for name in re.findall(r"(?<![\w/-])((?:rakuten|request)_[a-z0-9_]+\*?)(?![\w./])", snippet):
            if name.startswith(("rakuten_common", "request_gate")):
                continue
            if name.endswith("*") or name.endswith("_"):
                ok = any(m.startswith(name.rstrip("*")) for m in exported)
            else:
                ok = name in known or not name.startswith(("rakuten_", "request_")) or (
                    name.startswith("request_") and not name.endswith("_seconds"))
            if not ok:
                unknown.add(f"{rel(page)}: {name}")
    assert not unknown, sorted(unknown)


# -- files and links --------------------------------------------------------------------------------------
TRACKED_DIRS = ("rakuten_common", "training_job", "model_server", "charts", "k8s", "docs", "scripts", "tests",
                "benchmarks", "loadtests", "requirements", "mk", ".github", ".ci")


def test_file_paths_named_in_the_docs_exist():
    missing = set()
    for page, snippet in snippets():
        for path in re.findall(rf"(?<![\w./-])((?:{'|'.join(map(re.escape, TRACKED_DIRS))})/[\w./-]*[\w/])", snippet):
            if re.search(r"[<>*{}…]|\.\.\.", path):
                continue
            if not (REPO / path).exists():
                missing.add(f"{rel(page)}: {path}")
        for name in re.findall(r"(?<![\w./-])(Makefile|Dockerfile|kind-config\.yaml|pyproject\.toml)(?![\w.-])", snippet):
            assert (REPO / name).exists(), name
    assert not missing, sorted(missing)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@functools.cache
def anchors(path) -> frozenset[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return frozenset(slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M))


def test_links_between_the_pages_resolve():
    broken = []
    for page in PAGES:
        text = re.sub(r"`[^`\n]+`", "", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = (page.parent / file).resolve() if file else page
            if not resolved.exists():
                broken.append(f"{rel(page)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{rel(page)}: {target} (no such heading)")
    assert not broken, broken


def test_readme_is_a_landing_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "```mermaid" in readme
    assert "make demo" in readme and "make test" in readme
    for guide in ("getting-started", "kubernetes", "real-data", "lifecycle", "monitoring", "hardening",
                  "load-testing", "troubleshooting"):
        assert f"(docs/{guide}.md)" in readme, guide


# -- versions ----------------------------------------------------------------------------------------------
def minor(version: str) -> tuple[int, int]:
    major, minor_, *_ = version.lstrip("v").split(".")
    return int(major), int(minor_)


def test_kubernetes_and_kubectl_versions_agree_everywhere():
    pins = versions()
    cluster = minor(pins["KUBERNETES_VERSION"])
    kserve_minimum = re.search(r"KServe \S+ needs Kubernetes (1\.\d+) or newer",
                               (REPO / "k8s" / "versions.env").read_text()).group(1)
    wanted = {"Kubernetes": minor(kserve_minimum), "kubectl": (cluster[0], cluster[1] - 1)}
    texts = {rel(p): p.read_text() for p in [*PAGES, REPO / "charts" / "rakuten-serving" / "README.md",
                                             REPO / "scripts" / "install-tools.sh"]}
    found = []
    for name, text in texts.items():
        for match in re.finditer(r"\b(Kubernetes|kubectl)\s*\(?(?:>=\s*|)(1\.\d+)(\+| or newer)?", text):
            what, version, newer = match.groups()
            if ">=" in match.group(0) or newer:
                found.append((name, what, version))
                assert minor(version) == wanted[what], \
                    f"{name}: {what} {version}+ but the one truth is {what} {'.'.join(map(str, wanted[what]))}+"
    assert {w for _, w, _ in found} == {"Kubernetes", "kubectl"}, found


# -- the V2 contract page -----------------------------------------------------------------------------------
def test_v2_contract_page_matches_the_codec():
    from model_server.codec import OPTIONAL_INPUTS, REQUIRED_INPUTS
    from model_server.model import RakutenClassifier

    page = (REPO / "docs" / "reference" / "v2-contract.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (yes|no) \|", page, re.M))
    assert rows == {**{n: "yes" for n in REQUIRED_INPUTS}, **{n: "no" for n in OPTIONAL_INPUTS}}, rows
    for tensor in RakutenClassifier.get_input_types(None):
        assert tensor["datatype"] == "BYTES" and "all inputs `datatype: BYTES`" in page, tensor
    for tensor in RakutenClassifier.get_output_types(None):
        assert f"`{tensor['name']}` {tensor['datatype']}" in page, tensor


# -- the chart values of the options reference, against a real render ---------------------------------------
def changed(path: str):
    """Another valid value for ``path`` than its default (None: not worth changing)."""
    default = functools.reduce(lambda node, key: node[key], path.split("."), VALUES)
    if isinstance(default, bool):
        return None
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return default / 2
    if isinstance(default, str):
        return "s3://rakuten-datasets/docs-check" if path.lower().endswith("uri") else (default or "x") + "-check"
    return None


#: Values every render below starts from: the optional containers on, data for batch predictions.
BASE_SETS = ["batchPredict.enabled=true", "batchPredict.dataUri=s3://rakuten-datasets/rakuten",
             "predictor.apiKeys.enabled=true"]


def rendered_settings(tools, folder, prog: str, changes: dict[str, object]) -> tuple[dict, dict]:
    """(env, ``--flag=value`` args) of ``prog``'s container, rendered with ``changes`` to the values."""
    values: dict = {}
    for path, value in changes.items():  # a values file: --set would turn floats into strings
        *parents, leaf = path.split(".")
        functools.reduce(lambda node, key: node.setdefault(key, {}), parents, values)[leaf] = value
    (folder / "values.yaml").write_text(yaml.safe_dump(values))
    module = next(c.container for c in gen_docs.COMMANDS if c.prog == prog)
    # the container running the module, in a Job or the InferenceService (a CronJob only repeats a Job)
    found = [(view.where, c) for view in pod_views(render(tools, folder / "values.yaml", sets=BASE_SETS))
             if view.where.split("/")[0] in ("Job", "InferenceService")
             for c in containers(view.spec) if c.get("command") == ["python", "-m", module]]
    assert len(found) == 1, (prog, [where for where, _ in found])
    target = found[0][1]
    return ({e["name"]: e.get("value") for e in target.get("env", [])},
            dict(a.split("=", 1) for a in target.get("args", []) if a.startswith("--") and "=" in a))


@pytest.mark.helm
@pytest.mark.parametrize("command", gen_docs.COMMANDS, ids=lambda c: c.prog.removeprefix("python -m "))
def test_chart_values_of_the_options_reference_set_those_options(tools, tmp_path, command):
    """Each chart value the reference names as setting an option directly, changed, sets that env
    variable or flag of the command's container in `helm template` to the new value."""
    rows = gen_docs.option_rows(command)
    settings = gen_docs.chart_settings(command, {r.flag for r in rows} | {e for r in rows for e in r.env})
    direct = {name: s.paths[0] for name, s in settings.items() if s.direct and changed(s.paths[0]) is not None}
    assert direct, command.prog
    together = rendered_settings(tools, tmp_path, command.prog, {path: changed(path) for path in direct.values()})
    for setting, path in direct.items():
        env, args = together
        if (args if setting.startswith("--") else env).get(setting) is None:  # set only under another condition
            env, args = rendered_settings(tools, tmp_path, command.prog, {path: changed(path)})
        value = args.get(setting) if setting.startswith("--") else env.get(setting)
        assert value == str(changed(path)), f"{command.prog} {setting}: {path}={changed(path)} rendered {value!r}"


@pytest.mark.helm
def test_objects_the_docs_name_exist_in_a_render_of_the_make_deploy_release(tools):
    """`secret rakuten-serving-...`, `svc/rakuten-serving-...`: names of the release `make deploy` installs."""
    done = run([tools.helm, "template", "rakuten-serving", str(CHART), "--namespace", "rakuten",
                *(arg for item in BASE_SETS for arg in ("--set", item))])
    assert done.returncode == 0, done.stderr
    names = {doc["metadata"]["name"] for doc in yaml.safe_load_all(done.stdout) if doc}
    missing = set()
    for page in PAGES:
        for name in re.findall(r"(?:secret |svc/|Secret `)(rakuten-[a-z0-9-]*[a-z0-9])(?![a-z0-9<-])",
                               page.read_text()):
            if name not in names:
                missing.add(f"{rel(page)}: {name}")
    assert not missing, sorted(missing)
