"""The docs do what they say: every fenced code block a user would type in README.md and the user
docs runs in the real demo, in alice's session, or is marked in the doc, visibly, as not run here and why;
every typed block of the admin and developer docs is configuration whose classes and traits are real
(and whose values those traits accept), or is marked.

A "typed" block is one in a shell or Python language (``sh``, ``bash``, ``console``, ``python``);
diagrams, JSON models and submit-file excerpts are not. A block is marked by an italic line right
before it that starts with ``*Production only:`` or ``*Not run by the doc test:`` and gives the
reason. Every other typed block runs, in the order of its doc, in one kernel of alice's hub-spawned
server (shell blocks with ``bash -euo pipefail`` from that kernel, so in the session's environment).
The docs speak of the facility (``/store/user/alice/ntuple.root``, ``xrootd.example.org``,
``<cluster id>``); SUBSTITUTIONS says what each name stands for in the demo, and a typed block with a
``<placeholder>`` the table does not know fails the fast test.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from devstack.datademo import SAMPLES
from devstack.demo_session import CellError, Demo, log_in_and_spawn, output_text
from devstack.xrootd import missing_prerequisites

REPO = Path(__file__).resolve().parent.parent
#: The docs a user reads and types from (admin and developer docs configure the facility).
USER_DOCS = ["README.md", "docs/user-guide.md", "docs/data-access.md", "docs/client.md", "docs/web-ui.md",
             "docs/dask-gateway.md"]
#: The admin and developer docs: what they have one type is configuration (``c.<Class>.<trait> = ...``).
CONFIG_DOCS = sorted({str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")} - set(USER_DOCS))
TYPED = {"sh", "bash", "console", "shell", "python", "py"}
SHELL = {"sh", "bash", "console", "shell"}
MARKER = re.compile(r"^\*(Production only|Not run by the doc test): (?P<reason>\S.{10,})\*$")

#: The facility's names in the docs → the demo's. ``{origin}``, ``{hub}`` and ``{cluster}`` are filled
#: in at run time (the demo's XRootD origin, its hub URL, a cluster made for the block).
SUBSTITUTIONS = {
    "<cluster id>": "{cluster}",
    "roots://xrootd.example.org:1094": "{origin}",
    "/store/user/$USER": "/store/user/demo/nanoaod",
    "/store/user/alice/ntuple.root": SAMPLES[0],
    "/store/user/alice/a.root": SAMPLES[1],
    "/store/user/alice/b.root": SAMPLES[2],
    "https://hub.example/": "{hub}",
}


@dataclass
class Block:
    doc: str
    line: int
    language: str
    code: str
    marker: str | None

    @property
    def typed(self) -> bool:
        return self.language in TYPED

    def __str__(self) -> str:
        return f"{self.doc}:{self.line} ({self.language})"


FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)


def doc_blocks(doc: str) -> list[Block]:
    text = (REPO / doc).read_text()
    blocks = []
    for m in FENCE.finditer(text):
        before = [line.strip() for line in text[:m.start()].splitlines() if line.strip()]
        marker = before[-1] if before and MARKER.match(before[-1]) else None
        blocks.append(Block(doc, text[:m.start()].count("\n") + 1, m.group("lang"),
                            textwrap.dedent(m.group("body")), marker))
    return blocks


def to_run(doc: str) -> list[Block]:
    return [b for b in doc_blocks(doc) if b.typed and b.marker is None]


def test_every_typed_block_is_run_or_marked_with_a_reason():
    blocks = [b for doc in USER_DOCS for b in doc_blocks(doc)]
    typed = [b for b in blocks if b.typed]
    assert len(typed) >= 10, typed  # the parser finds the docs' blocks (indented ones too)
    assert any(b.doc == "docs/user-guide.md" and "expires in" in b.code for b in typed)
    placeholders = set(SUBSTITUTIONS)
    for block in typed:
        if block.marker:
            assert MARKER.match(block.marker).group("reason").strip(), block
            continue
        unknown = set(re.findall(r"<[a-z][a-z ]*>", block.code)) - placeholders
        assert not unknown, f"{block}: placeholders {unknown} have no demo value in SUBSTITUTIONS"


def configurable_classes() -> dict:
    """Every class a facility's jupyterhub_config.py or service config file may configure, by name."""
    from jupyterhub.app import JupyterHub

    from authenticators import IAMAuthenticator
    from cmsaf_hub.service.app import CmsafService
    from cmsaf_hub.service.backends.htcondor import HTCondorBackend
    from cmsaf_hub.service.backends.local import LocalBackend
    from spawners import IAMKubeSpawner, IAMLocalSpawner

    classes = (JupyterHub, IAMAuthenticator, IAMLocalSpawner, IAMKubeSpawner, CmsafService, HTCondorBackend,
               LocalBackend, *CmsafService.classes)
    return {cls.__name__: cls for cls in classes}


def test_admin_docs_configuration_names_real_traits_with_values_they_accept(monkeypatch):
    """Each unmarked typed block of the admin docs runs as configuration (``c`` a traitlets Config),
    and every ``c.<Class>.<trait>`` it sets is a configurable trait of that class that accepts the value
    (entry-point names such as ``"cmsaf-iam"`` are loaded). A doc naming a trait that does not exist,
    or a value of the wrong type, fails here."""
    from cryptography.fernet import Fernet
    from traitlets import HasTraits, TraitError
    from traitlets.config import Config, LazyConfigValue

    monkeypatch.setenv("CMSAF_SERVICE_CRYPT_KEY", Fernet.generate_key().decode())  # the docs' own variable
    known, holder = configurable_classes(), HasTraits()  # the holder: a trait validates on some object
    blocks = [b for doc in CONFIG_DOCS for b in to_run(doc)]
    assert len(blocks) >= 8, blocks
    wrong = []
    for block in blocks:
        if block.language not in ("python", "py"):
            wrong.append(f"{block}: a shell block in an admin doc is either marked or belongs in a user doc")
            continue
        c = Config()
        exec(compile(block.code, str(block), "exec"), {"c": c, "os": os})
        if not c:
            wrong.append(f"{block}: configures nothing (a fragment? mark it)")
        for section, traits in c.items():
            if section not in known:
                wrong.append(f"{block}: no configurable class {section}")
                continue
            for name, value in traits.items():
                if name not in known[section].class_trait_names(config=True):
                    wrong.append(f"{block}: {section}.{name} is not a configurable trait")
                    continue
                if value is Ellipsis or isinstance(value, list) and Ellipsis in value:
                    continue  # "[..., new entry]": the doc shows an addition to the default
                trait = known[section].class_traits()[name]
                if isinstance(value, LazyConfigValue):  # c.X.y.append(...) and the like, on the default
                    value = value.get_value(trait.default())
                try:
                    trait.validate(holder, value)
                except (TraitError, ValueError, TypeError) as e:
                    wrong.append(f"{block}: {section}.{name} = {value!r} is refused: {e}")
    assert not wrong, "\n".join(wrong)


def test_markers_are_recognised_only_when_they_give_a_reason():
    assert MARKER.match("*Production only: needs the facility's HTCondor pool.*")
    assert not MARKER.match("*Production only*")
    assert not MARKER.match("*Production only: tbd*")
    assert not MARKER.match("Production only: needs the facility's HTCondor pool")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice():
    reason = missing_prerequisites()
    assert reason is None, f"the demo's data site cannot run here: {reason}"
    demo = Demo()
    await demo.start()
    try:
        yield await log_in_and_spawn(demo, "alice", "alice-password")
    finally:
        await demo.stop()


SETUP = """
import json, os, pathlib, subprocess
# a laptop's token file, for the docs' Hub(..., token_file="~/.cmsaf-token")
_token_file = pathlib.Path("~/.cmsaf-token").expanduser()
_token_file.write_text(os.environ["JUPYTERHUB_API_TOKEN"])
_token_file.chmod(0o600)

def _new_cluster_id():
    from cmsaf_hub.client import Hub
    with Hub() as hub:
        report = hub.submit(workers=1, cores=1, memory=1.0)
        hub.wait_for_cluster(report.id, timeout=300)
        return report.id

def _shell(code):
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], capture_output=True, text=True, timeout=600)
    print(r.stdout, end="")
    if r.returncode:
        raise RuntimeError(f"exit {r.returncode}; stderr:\\n{r.stderr[-3000:]}")

def _stop_all():
    from cmsaf_hub.client import Hub
    with Hub() as hub:
        for report in hub.list_clusters():
            hub.stop_cluster(report.id)

print(json.dumps({"origin": os.environ["CMSAF_XROOTD_ORIGIN"]}))
"""


def substituted(code: str, values: dict[str, str]) -> str:
    for name, value in SUBSTITUTIONS.items():
        if name in code:
            code = code.replace(name, value.format(**values))
    return code


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("doc", [d for d in USER_DOCS if to_run(d)])
async def test_doc_blocks_run_in_a_demo_session(alice, doc):
    notebook = f"doc-test-{Path(doc).stem}.ipynb"
    await alice.put_file(notebook, json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}),
                         notebook=True)
    kernel = await alice.kernel(notebook)
    ran, failed = [], []
    try:
        values = {**json.loads(output_text(await kernel.execute(SETUP))), "hub": alice.demo.url}
        for block in to_run(doc):
            if "<cluster id>" in block.code:
                values["cluster"] = output_text(await kernel.execute("print(_new_cluster_id())")).strip()
            code = substituted(block.code, values)
            source = f"_shell({code!r})" if block.language in SHELL else code
            try:
                await kernel.execute(source)
            except CellError as e:
                failed.append(f"{block} fails in the demo:\n{code}\n---\n{str(e)[-2500:]}")
            ran.append(str(block))
        await kernel.execute("_stop_all()")
    finally:
        await kernel.shutdown()
    assert not failed, "\n\n".join(failed)
    assert ran == [str(b) for b in to_run(doc)]
