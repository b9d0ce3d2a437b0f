"""Link calibration from public nccl-tests logs (tests/fixtures/nccl/): parser, joint fit,
reproduction through the simulator's Fabric, the CLI and the shipped fitted topologies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, run_sim
from omegaconf import OmegaConf

from sim.build import build_graph
from sim.config.parse import load_hardware
from sim.config.presets import load_preset
from sim.cost.collectives import nccl_model_s
from sim.errors import ConfigError
from sim.tools.calibration.cli import _run_config
from sim.tools.calibration.cli import main as calibrate_main
from sim.tools.calibration.link_fit import (
    LogSystem,
    errors,
    fabric_times_us,
    fit_links,
    launch_identified,
    network_from_name,
    topology_mapping,
)
from sim.tools.calibration.nccl_log import parse_nccl_log

FIXTURES = ROOT / "tests" / "fixtures" / "nccl"
LOGS = sorted(FIXTURES.glob("*.txt"))
MiB = 1 << 20

# file stem -> (collective, ranks, nodes, GPUs per process, shipped topology, hardware)
EXPECTED = {
    "a100_sxm4_40g_1node_hgx_allreduce_oci": ("allreduce", 8, 1, 8, "a100_40g_nccl_fit", "a100"),
    "a100_sxm4_40g_2node_roce_allreduce_oci": ("allreduce", 16, 2, 1, "a100_40g_roce_nccl_fit", "a100"),
    "a100_sxm4_40g_2node_roce_allreduce_ocihpcoke": ("allreduce", 16, 2, 1, "a100_40g_roce_nccl_fit", "a100"),
    "a100_sxm4_80g_1node_allreduce_g8_thanos": ("allreduce", 8, 1, 8, "a100_nccl_fit", "a100"),
    "a100_sxm4_80g_1node_allreduce_mpi8_thanos": ("allreduce", 8, 1, 1, "a100_nccl_fit", "a100"),
    "h100_sxm_1node_allgather_ring_together": ("allgather", 8, 1, 8, "h100_nccl_fit", "h100"),
    "h100_sxm_1node_allreduce_ring_together": ("allreduce", 8, 1, 8, "h100_nccl_fit", "h100"),
    "h100_sxm_2node_ib_ndr_allreduce_issue309": ("allreduce", 16, 2, 1, "h100_ib_nccl_fit", "h100"),
    "h100_sxm_4node_vm_ib_allreduce_issue309": ("allreduce", 32, 4, 1, "h100_ib_nccl_fit", "h100"),
    "rtx4090_8x_pcie_1node_allreduce_nop2p_chlc": ("allreduce", 8, 1, 8, "rtx4090_pcie_nccl_fit", "rtx4090"),
    "rtx4090_8x_pcie_1node_allreduce_p2p_unlocked_chlc": ("allreduce", 8, 1, 8, "rtx4090_pcie_nccl_fit", "rtx4090"),
}


def system(path: Path) -> LogSystem:
    log = parse_nccl_log(path)
    return LogSystem(log, load_hardware(EXPECTED[log.name][5]), network_from_name(log.name) if log.nodes > 1 else None)


@pytest.fixture(scope="module")
def systems() -> list[LogSystem]:
    return [system(p) for p in LOGS]


@pytest.fixture(scope="module")
def fit(systems):
    return fit_links(systems)


def test_every_fixture_is_expected_and_has_its_source_line():
    assert {p.stem for p in LOGS} == set(EXPECTED)
    for p in LOGS:
        assert p.read_text().startswith("# source: ")
        assert parse_nccl_log(p).source


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.stem)
def test_parser_reads_shape_of_each_log(path):
    log = parse_nccl_log(path)
    collective, ranks, nodes, per_process, _, _ = EXPECTED[log.name]
    assert (log.collective, log.ranks, log.nodes, log.gpus_per_process) == (collective, ranks, nodes, per_process)
    assert len(log.bytes) == len(log.in_place_us) == len(log.out_of_place_us) >= 20
    assert np.all(log.bytes > 0) and np.all(np.diff(log.bytes) > 0)
    assert np.all(log.time_us <= log.in_place_us) and np.all(log.time_us > 0)


def test_parser_drops_zero_byte_rows_and_keeps_warmup_outlier_out():
    gather = parse_nccl_log(FIXTURES / "h100_sxm_1node_allgather_ring_together.txt")
    assert gather.bytes[0] == 128  # four 0 B no-op rows skipped
    ib = parse_nccl_log(FIXTURES / "h100_sxm_2node_ib_ndr_allreduce_issue309.txt")
    assert ib.out_of_place_us[0] == pytest.approx(68.52) and ib.time_us[0] == pytest.approx(24.70)


def test_parser_names_the_line_of_a_bad_row(tmp_path):
    lines = (FIXTURES / "h100_sxm_1node_allreduce_ring_together.txt").read_text().splitlines()
    first_row = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    lines[first_row + 2] = "          32             8     float     sum      -1    abc    0.00    0.00      0"
    bad = tmp_path / "bad_all_reduce.txt"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=rf"bad_all_reduce.txt line {first_row + 3}: expected a data row"):
        parse_nccl_log(bad)
    with pytest.raises(ConfigError, match="collective"):
        parse_nccl_log(FIXTURES / "h100_sxm_1node_allreduce_ring_together.txt", collective="gather_scatter")


def test_fit_separates_launch_overhead_and_is_physical(fit, systems):
    assert 0.5 < fit.launch_us < 6.0  # per extra GPU driven by one process (A100 g8 vs mpi8 pair)
    assert fit.software_us >= 0.0 and fit.base_us >= 6.8
    for key in ("h100", "a100", "a100_40g"):
        assert 0.2 <= fit.hop_intra_us[key] <= 3.0, (key, fit.hop_intra_us[key])
    assert 0.2 <= fit.hop_intra_us["rtx4090_pcie"] <= 3.0
    assert 2.0 <= fit.hop_net_us["h100_ib"] <= 10.0  # NCCL's network hop: 5 us
    assert fit.hop_net_us["a100_40g_roce"] > 0
    for s in systems:  # never above the datasheet link
        assert fit.bw_intra_GBps[s.intra_key] <= s.hardware.scaleup_bandwidth_GBps + 1e-9
        if s.net_key:
            assert 0 < fit.bw_net_GBps[s.net_key] <= 50.0 + 1e-9
    assert fit.bw_net_GBps["a100_40g_roce"] <= 25.0 + 1e-9
    # the single-process run pays the launch cost, the one-process-per-GPU run does not
    g8, mpi8 = (next(s for s in systems if s.log.name.endswith(k)) for k in ("g8_thanos", "mpi8_thanos"))
    assert launch_identified(systems) and not launch_identified([g8]) and launch_identified([g8, mpi8])
    assert fit.collective_software_us(g8) - fit.collective_software_us(mpi8) == pytest.approx(7 * fit.launch_us)


def test_fitted_topologies_reproduce_small_messages_through_fabric(fit, systems):
    for s in systems:
        rc = _run_config(topology_mapping(fit, s), s.hardware.name, s.log.ranks)
        e = errors(s, fabric_times_us(s.log, rc, fit.collective_software_us(s)))
        assert e["median_abs_error"] <= 0.15, (s.log.name, e["median_abs_error"])


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.stem)
def test_shipped_topology_reproduces_its_log(path):
    """conf/topology/*_nccl_fit.yaml, loaded as a preset, reproduces its logs (<= 1 MiB) via the Fabric."""
    log = parse_nccl_log(path)
    name, hardware = EXPECTED[log.name][4], EXPECTED[log.name][5]
    mapping = load_preset("topology", name)
    fitted = mapping["fitted"]
    assert log.name in fitted["logs"] and fitted["hardware"] == hardware
    software = fitted["engine"]["collective_software_us"] + fitted["launch_us_per_extra_gpu"] * (log.gpus_per_process - 1)
    rc = _run_config(mapping, hardware, log.ranks)
    pred = fabric_times_us(log, rc, software)
    small = log.bytes <= MiB
    median = float(np.median(np.abs(pred[small] / log.time_us[small] - 1)))
    assert median <= 0.15, median
    assert median == pytest.approx(fitted["median_abs_error_le_max_bytes"][log.name], abs=2e-3)
    if "bandwidth_net_GBps" in fitted:
        assert mapping["ib_bandwidth_GBps"] <= 50.0
    assert mapping["link_bandwidth_GBps"] <= load_hardware(hardware).scaleup_bandwidth_GBps


def test_nccl_model_keeps_ncc_constants_unless_topology_asks():
    """Epoch's numbers are unchanged: no hops given -> 25.2 us for 16 ranks on 2 nodes; a
    topology with nccl_hops=links and NCCL's own values gives the same through the Fabric."""
    assert nccl_model_s("allreduce", 16, 8, 2, 8.0, 400e9) * 1e6 == pytest.approx(25.2, abs=0.01)
    assert nccl_model_s("allreduce", 16, 8, 2, 8.0, 400e9, hop_us=(0.6, 5.0)) * 1e6 == pytest.approx(25.2, abs=0.01)
    log = parse_nccl_log(FIXTURES / "h100_sxm_2node_ib_ndr_allreduce_issue309.txt")
    for hops in ("constants", "links"):
        rc = _run_config({"kind": "multi_node_ib", "nccl_hops": hops, "link_latency_us": 0.6}, "h100", 16)
        assert fabric_times_us(log, rc, 0.0)[0] == pytest.approx(25.2, abs=0.01)
    rc = _run_config({"kind": "multi_node_ib", "ib_latency_us": 10.0}, "h100", 16)
    assert fabric_times_us(log, rc, 0.0)[0] == pytest.approx(25.2, abs=0.01)  # constants ignore links
    rc = _run_config({"kind": "multi_node_ib", "ib_latency_us": 10.0, "nccl_hops": "links"}, "h100", 16)
    assert fabric_times_us(log, rc, 0.0)[0] == pytest.approx(35.2, abs=0.01)


def test_link_overrides_reach_the_graph():
    graph = build_graph(_run_config({"kind": "hgx", "link_latency_us": 1.5, "link_bandwidth_GBps": 100.0}, "h100", 8))
    lat = {d["latency_us"] for _, _, d in graph.edges(data=True)}
    bw = {d["bandwidth_GBps"] for _, _, d in graph.edges(data=True)}
    assert lat == {0.75} and bw == {100.0}
    with pytest.raises(ConfigError, match="link_latency_us"):
        _run_config({"kind": "hgx", "link_latency_us": -1.0}, "h100", 8)


def test_cli_writes_topology_that_loads(tmp_path, capsys):
    files = [FIXTURES / "h100_sxm_2node_ib_ndr_allreduce_issue309.txt",
             FIXTURES / "h100_sxm_4node_vm_ib_allreduce_issue309.txt"]
    report = calibrate_main([f"data={files[0]},{files[1]}", "format=nccl-tests", "hardware=h100",
                             "name=my_ib", f"out={tmp_path / 'topology'}"])
    out = capsys.readouterr().out
    assert "measured" in out and "predicted" in out and "median |error|" in out
    assert report["written"] == [str(tmp_path / "topology" / "my_ib.yaml")]
    assert max(report["median_abs_error"].values()) <= 0.15
    mapping = load_preset("topology", "my_ib", conf_dir=tmp_path)
    cfg = _run_config(mapping, "h100", 16)
    assert cfg.topology.kind == "multi_node_ib" and cfg.topology.nccl_hops == "links"
    assert build_graph(cfg).graph["nccl_hops"] == "links"
    assert OmegaConf.load(tmp_path / "topology" / "my_ib.yaml").fitted.hardware == "h100"


def test_shipped_topology_runs_in_the_simulator(tmp_path):
    r = run_sim("-m", "sim", "topology=h100_ib_nccl_fit", "engine=epoch", "parallel.tp=16", "workload.max_requests=5",
                "output.write_parquet=false", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"completed": 5' in r.stdout


def test_cli_malformed_log_is_one_line_error(tmp_path):
    bad = tmp_path / "broken_all_reduce_perf.txt"
    bad.write_text("# nThread 1 nGpus 8 minBytes 8\n#  Rank  0 Group  0 Pid 1 on host device  0 [0x07] NVIDIA H100\n"
                   "           8             2     float     sum      -1    oops\n")
    r = run_sim("-m", "sim.calibrate", f"data={bad}", f"out={tmp_path}")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "line 3" in r.stderr, r.stderr
    r = run_sim("-m", "sim.calibrate", f"data={bad}", "format=nccl-tests", "bogus=1")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "bogus" in r.stderr


def test_a_log_that_cannot_tell_launch_from_hop_latency_gets_one_answer():
    """One ``-g 8`` log alone: launch cost and per-hop latency trade off along a line of equal
    fits; the weak prior settles the hop at the preset's NCCL figure (0.6 us for H100) and the
    fit still reproduces the log, wherever the solver starts."""
    s = system(FIXTURES / "h100_sxm_1node_allreduce_ring_together.txt")
    assert not launch_identified([s])
    fit = fit_links([s])
    assert fit.hop_intra_us["h100"] == pytest.approx(load_hardware("h100").scaleup_latency_us, rel=0.02)
    from sim.tools.calibration.link_fit import formula_us, per_rank_bytes
    assert errors(s, formula_us(fit, s, per_rank_bytes(s.log)))["median_abs_error"] < 0.03
    # with the launch cost known the prior is off: the joint fit's hop is the logs' own
    pinned = fit_links([s], launch_us=fit.launch_us + 1.0)
    assert abs(pinned.hop_intra_us["h100"] - fit.hop_intra_us["h100"]) > 0.01
