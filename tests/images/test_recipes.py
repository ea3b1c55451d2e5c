"""The Dockerfiles (the release path, with a registry) and images/images.toml (the table the
registry-less `make images` builds from) describe the same images: same lock file used the
same way, same extras, user, environment, entrypoint. No cluster, no build."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLE = tomllib.loads((ROOT / "images/images.toml").read_text())
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@dataclass
class Stage:
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]

    def last(self, op: str) -> str:
        found = self.all(op)
        assert found, f"no {op} in the final stage"
        return found[-1]


def parse_dockerfile(path: Path, build_args: dict[str, str]) -> list[Stage]:
    """Stages of a Dockerfile, continuation lines joined, comments dropped, ARG values
    (defaults, then build_args) substituted."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # Docker drops comment lines, also inside a continued instruction.
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "ARG":
            name, _, default = rest.partition("=")
            args[name] = build_args.get(name, default or args.get(name, ""))
            continue
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        if op == "FROM":
            stages.append(Stage())
        stages[-1].instructions.append((op, rest))
    return stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for arg in stage.all("ENV"):
        for word in shlex.split(arg):
            key, _, value = word.partition("=")
            env[key] = value
    return env


RECIPES = sorted(TABLE["images"].items())


@pytest.mark.parametrize(("name", "recipe"), RECIPES, ids=[n for n, _ in RECIPES])
def test_dockerfile_matches_the_table(name: str, recipe: dict[str, Any]) -> None:
    stages = parse_dockerfile(ROOT / recipe["dockerfile"], recipe.get("build_args", {}))
    assert len(stages) == 2, "a build stage and the final stage"
    build, final = stages
    run = " ; ".join(build.all("RUN"))
    copies = build.all("COPY")
    venv = recipe["venv"]

    assert f"python -m venv {venv}" in run
    # The lock file goes in, and is used the way the local builder uses it.
    copied_lock = next((c.split()[-1] for c in copies if c.split()[0] == recipe["lock"]), None)
    assert copied_lock, f"{recipe['dockerfile']} does not COPY {recipe['lock']}"
    pip = f"{venv}/bin/pip install"
    if recipe["lock_mode"] == "constraints":
        extras = ",".join(recipe["extras"])
        assert re.search(rf'{re.escape(pip)} -c {re.escape(copied_lock)} "\$1\[{extras}\]"',
                         run), run
    elif recipe["lock_mode"] == "no-deps":
        assert f"{pip} --no-deps -r {copied_lock}" in run
        if recipe["top"] == "wheel":
            assert f'{pip} --no-deps "$1"' in run, "the wheel goes in with --no-deps"
    else:
        assert f"{pip} -r {copied_lock}" in run and "--no-deps" not in run
    if recipe["top"] == "seldon-adapter":
        assert any(c.split() == ["operator/kustos/runtime/seldon_adapter.py",
                                 f"{recipe['adapter_dir']}/kustos_seldon_adapter.py"]
                   for c in final.all("COPY") + copies)
    elif recipe["top"] == "none":
        assert not [c for c in copies if c.startswith("dist/")], "no kustos wheel in it"
    else:
        assert "COPY dist/ /tmp/dist/" in [f"COPY {c}" for c in copies]
    assert "-m compileall" in run, "byte-compiled at build time (read-only root filesystem)"
    # images/prune.py runs in both builds, after the install and before byte-compiling.
    pruned = f"{venv}/bin/python /tmp/prune.py {venv} {' '.join(recipe.get('prune', []))}"
    if recipe.get("prune"):
        assert "images/prune.py /tmp/prune.py" in copies, copies
        # The whole command: its list of what to remove ends at the end of the command.
        found = re.search(re.escape(pruned) + r"\s*(;|&&|$)", run)
        assert found and found.start() < run.index("-m compileall"), run
    else:
        assert "prune.py" not in run

    assert final.all("COPY") == [f"--from=build {venv} {venv}"]
    assert final.last("USER") == TABLE["base"]["user"]
    assert env_of(final) == recipe["env"]
    assert json.loads(final.last("ENTRYPOINT")) == recipe["entrypoint"]
    assert json.loads(final.last("CMD")) == recipe["cmd"]
    assert final.last("WORKDIR") == recipe["workdir"]
    if recipe["ports"]:
        assert [int(p) for p in final.last("EXPOSE").split()] == recipe["ports"]
    else:
        assert not final.all("EXPOSE")
    title = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', final.last("LABEL"))
    assert title and title.group(1) == recipe["repository"].rsplit("/", 1)[1]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
    assert m, req
    return normalise(m.group(0))


def test_constraints_pin_every_direct_dependency_of_the_images() -> None:
    """The kustos images install with -c requirements/constraints.txt; a requirement with
    no pin there would float (the builder also checks every installed package)."""
    pinned = {normalise(line.split("==")[0]) for line in
              (ROOT / "requirements/constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    optional = PROJECT["optional-dependencies"]
    for name, recipe in RECIPES:
        if recipe["lock_mode"] != "constraints":
            continue
        reqs = list(PROJECT["dependencies"])
        for extra in recipe["extras"]:
            reqs += [r for r in optional[extra] if not r.startswith("kustos[")]
        missing = sorted({requirement_name(r) for r in reqs} - pinned)
        assert not missing, f"{name}: not in requirements/constraints.txt: {missing}"


def test_operator_imports_are_core_dependencies() -> None:
    """`kustos run` imports hvac (the Vault controller), cryptography (the webhook's
    certificate) and urllib3 (kustos.k8s.client): they must be core dependencies, not
    dev-only or merely another package's dependency."""
    core = {requirement_name(r) for r in PROJECT["dependencies"]}
    assert {"hvac", "cryptography", "requests", "kopf", "urllib3"} <= core
    assert "kubernetes" not in core, "the official client is 200 MB; kustos.k8s replaces it"
