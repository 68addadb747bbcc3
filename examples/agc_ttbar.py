"""A semi-leptonic ttbar selection in the style of the IRIS-HEP Analysis Grand Challenge, for coffea.

Used by ``ttbar-analysis.ipynb`` (on a facility cluster) and ``benchmarks/analysis.py`` (facility
cluster vs LocalCluster). Events with exactly one tight lepton and at least four jets are split into
two regions: exactly one b-tagged jet (``4j1b``: the scalar sum of jet pT, H_T) and at least two
(``4j2b``: the mass of the three-jet combination with the largest pT that holds a b-tagged jet, which
peaks near the top quark mass in real ttbar events). Histograms are weighted by ``genWeight``; the
processor also counts events and sums weights per dataset, for normalising to a luminosity.
"""

from __future__ import annotations

import awkward as ak
import hist
import numpy as np
from coffea import processor

#: The b-tag working point on ``Jet_btagDeepFlavB`` (a medium-like cut).
BTAG_CUT = 0.5
#: Cross sections in pb, for normalising each dataset to a luminosity.
CROSS_SECTIONS = {"ttbar": 831.76 * 0.438, "wjets": 61526.7}


def fileset(datasets: dict[str, list[str]], url=lambda path: path) -> dict:
    """coffea's fileset: {dataset: {"files": {url: "Events"}}}, with ``url`` turning paths into URLs
    (``cmsaf_hub.data.facility_url`` at the facility)."""
    return {name: {"files": {url(path): "Events" for path in paths}} for name, paths in datasets.items()}


def new_histogram(name: str, label: str, bins: int, start: float, stop: float) -> hist.Hist:
    return (hist.Hist.new.StrCat([], name="dataset", label="dataset", growth=True)
            .Reg(bins, start, stop, name=name, label=label).Weight())


class TtbarProcessor(processor.ProcessorABC):
    """Object selection, two signal regions, and their observables, per chunk of NanoAOD events."""

    def process(self, events) -> dict:
        dataset = events.metadata["dataset"]
        electrons = events.Electron[(events.Electron.pt > 30) & (abs(events.Electron.eta) < 2.1)
                                    & (events.Electron.cutBased == 4) & (events.Electron.pfRelIso03_all < 0.15)]
        muons = events.Muon[(events.Muon.pt > 30) & (abs(events.Muon.eta) < 2.1) & events.Muon.tightId
                            & (events.Muon.pfRelIso04_all < 0.15)]
        jets = events.Jet[(events.Jet.pt > 30) & (abs(events.Jet.eta) < 2.4) & (events.Jet.jetId >= 2)]

        one_lepton = (ak.num(electrons) + ak.num(muons)) == 1
        four_jets = ak.num(jets) >= 4
        n_btag = ak.sum(jets.btagDeepFlavB >= BTAG_CUT, axis=1)
        region_4j1b = one_lepton & four_jets & (n_btag == 1)
        region_4j2b = one_lepton & four_jets & (n_btag >= 2)

        ht = new_histogram("observable", r"$H_T$ [GeV]", 25, 50, 550)
        ht.fill(dataset=dataset, observable=ak.sum(jets[region_4j1b].pt, axis=1),
                weight=events.genWeight[region_4j1b])

        trijet = ak.combinations(jets[region_4j2b], 3, fields=["j1", "j2", "j3"])
        p4 = trijet.j1 + trijet.j2 + trijet.j3
        has_b = np.maximum(np.maximum(trijet.j1.btagDeepFlavB, trijet.j2.btagDeepFlavB),
                           trijet.j3.btagDeepFlavB) >= BTAG_CUT
        p4 = p4[has_b]
        best = ak.argmax(p4.pt, axis=1, keepdims=True)
        m_bjj = ak.fill_none(ak.firsts(p4[best].mass), -1.0)
        mass = new_histogram("observable", r"$m_{bjj}$ [GeV]", 25, 50, 550)
        mass.fill(dataset=dataset, observable=m_bjj, weight=events.genWeight[region_4j2b])

        return {
            "nevents": {dataset: len(events)},
            "sumw": {dataset: float(ak.sum(events.genWeight))},
            "selected": {dataset: {"4j1b": int(ak.sum(region_4j1b)), "4j2b": int(ak.sum(region_4j2b))}},
            "hists": {"4j1b": ht, "4j2b": mass},
        }

    def postprocess(self, accumulator: dict) -> dict:
        return accumulator


def normalised(output: dict, luminosity: float = 3378.0) -> dict[str, hist.Hist]:
    """The histograms scaled per dataset to ``luminosity`` (in /pb) with CROSS_SECTIONS."""
    scaled = {}
    for region, h in output["hists"].items():
        h = h.copy()
        for dataset in h.axes["dataset"]:
            factor = CROSS_SECTIONS[dataset] * luminosity / output["sumw"][dataset]
            view = h.view(flow=True)[h.axes["dataset"].index(dataset)]
            view.value *= factor
            view.variance *= factor ** 2
        scaled[region] = h
    return scaled
