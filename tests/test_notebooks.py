"""Every notebook in examples/ runs top to bottom in the real demo, as the demo user, through the hub.

``cmsaf-demo`` (dev IAM, XRootD origin + XCache with the NanoAOD-like samples, JupyterHub with the
cluster service) is started as a user starts it; alice logs in through the IAM's form, the hub spawns
her JupyterLab, the notebook and the modules beside it are saved into her home through the server's
contents API, and each code cell runs in a kernel of her server, i.e. with the session's environment.
Executed notebooks are written to test-artifacts/notebooks/ (not committed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
import pytest_asyncio

from devstack.demo_session import Demo, log_in_and_spawn, output_text
from devstack.xrootd import missing_prerequisites

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
ARTIFACTS = REPO / "test-artifacts" / "notebooks"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice():
    """The demo with its data site, and alice's running session."""
    reason = missing_prerequisites()
    assert reason is None, f"the demo's data site cannot run here: {reason}"
    demo = Demo()
    await demo.start()
    try:
        assert "Data:    origin roots://" in demo.banner, demo.banner
        session = await log_in_and_spawn(demo, "alice", "alice-password")
        for module in EXAMPLES.glob("*.py"):
            await session.put_file(module.name, module.read_text())
        yield session
    finally:
        await demo.stop()


async def test_there_are_notebooks_to_run():
    assert {p.name for p in NOTEBOOKS} >= {"read-data-on-a-cluster.ipynb", "ttbar-analysis.ipynb", "dask-gateway.ipynb"}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
async def test_notebook_runs_top_to_bottom_in_a_demo_session(alice, notebook):
    nb = nbformat.read(notebook, as_version=4)
    await alice.put_file(notebook.name, notebook.read_text(), notebook=True)
    kernel = await alice.kernel(notebook.name)
    try:
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = [nbformat.from_dict(o) for o in await kernel.execute(cell.source)]
    finally:
        await kernel.shutdown()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ARTIFACTS / notebook.name)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if notebook.stem == "ttbar-analysis":
        # the selection found events in both regions, and the histograms were drawn
        shown = [output_text([o]) for o in outputs if o.output_type == "execute_result"]
        selected = ast.literal_eval(next(text for text in shown if "4j2b" in text))
        assert selected["ttbar"]["4j1b"] > 0 and selected["ttbar"]["4j2b"] > 0, selected
        assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was drawn"
