"""keras-spiking's device table (cpu, gpu, arm, spinnaker, spinnaker2) against hand
computations on the tiny graph of test_energy, and ann-device models from TOML."""
import pytest

from spikebridge.hardware.energy import (BUILTIN_MODELS, KERAS_SPIKING_DEVICES, estimate,
                             load_energy_model_toml)
from spikebridge.base.errors import InputError
from tests.hardware.test_energy import tiny_graph, tiny_trace

# tiny graph: ANN MACs 5 (fc1) + 4 (fc2) = 9; neurons 2 (if1) + 2 (if2) = 4.
# tiny trace (2 samples): SOPs 4, analog MACs 18, neuron updates 16 -> per sample 2, 9, 8.


@pytest.mark.parametrize("name,e_syn,e_nu", [("cpu", 8600.0, 8600.0), ("gpu", 300.0, 300.0),
                                             ("arm", 900.0, 900.0)])
def test_ann_devices_charge_the_equivalent_ann_once(name, e_syn, e_nu):
    r = estimate(tiny_trace(), tiny_graph(), name)
    assert r["kind"] == "ann-device" and r["first_layer"] == "not applicable"
    assert r["total_pj_per_sample"] == pytest.approx(9 * e_syn + 4 * e_nu)
    assert r["per_node_pj_per_sample"] == pytest.approx(
        {"fc1": 5 * e_syn, "if1": 2 * e_nu, "fc2": 4 * e_syn, "if2": 2 * e_nu})
    assert "Degnan" in r["source"] and "keras-spiking" in r["source"]


@pytest.mark.parametrize("name,e_syn,e_nu", [("spinnaker", 13300.0, 26000.0),
                                             ("spinnaker2", 450.0, 2190.0)])
def test_spinnaker_devices(name, e_syn, e_nu):
    r = estimate(tiny_trace(), tiny_graph(), name)
    assert r["kind"] == "chip-style"
    # (4 SOPs + 18 analog MACs as graded-spike SOPs) x e_syn + 16 updates x e_nu, / 2 samples
    assert r["total_pj_per_sample"] == pytest.approx(((4 + 18) * e_syn + 16 * e_nu) / 2)
    assert "Hoeppner" in r["source"] and "1903.08941" in r["source"]


def test_device_table_complete_and_cited():
    assert set(KERAS_SPIKING_DEVICES) <= set(BUILTIN_MODELS)
    for d in KERAS_SPIKING_DEVICES:
        m = BUILTIN_MODELS[d]
        assert all("model_energy.py" in c.source for c in m.constants.values())


def test_toml_ann_device(tmp_path):
    p = tmp_path / "npu.toml"
    p.write_text('name = "npu"\nkind = "ann-device"\n'
                 '[constants.mac]\nvalue_pj = 1.5\nsource = "Doe 2031, Table 3"\n')
    m = load_energy_model_toml(p)
    assert estimate(tiny_trace(), tiny_graph(), m)["total_pj_per_sample"] == pytest.approx(9 * 1.5)
    p.write_text('name = "npu"\nkind = "ann-device"\n[constants.mac]\nvalue_pj = 1.5\n')
    with pytest.raises(InputError, match="no source"):
        load_energy_model_toml(p)
