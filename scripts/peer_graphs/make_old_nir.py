"""Write small NIR graphs with an OLDER nir release, for tests/hardware/test_profiles.py's
older-file tests (tests/data/nir_versions/<version>/{rnn,conv}.nir).

The NIR paper's 2023 files (neuromorphs/NIR, paper/) were written by nir 0.1/0.2; the
same node kinds are written here by whichever nir this interpreter has. Not run in CI;
in a throwaway environment per version:

    for v in 0.1.0 0.2.0 1.0.0; do
        python3.11 -m venv /tmp/nirold-$v && /tmp/nirold-$v/bin/pip install "nir==$v" h5py "numpy<2"
        mkdir -p tests/data/nir_versions/$v
        /tmp/nirold-$v/bin/python scripts/peer_graphs/make_old_nir.py tests/data/nir_versions/$v
    done

rnn: Affine -> LIF (with a recurrent Affine, bias 0.05) -> Affine -> CubaLIF;
conv: Conv2d (no input_shape before nir 1.0) -> IF -> Flatten -> Affine -> LI.
Time constants in steps (read with --profile nir, dt = 1).
"""
import sys, inspect, numpy as np, nir
out = sys.argv[1]
rng = np.random.default_rng(0)
def mk(cls, **kw):
    sig = inspect.signature(cls)
    return cls(**{k: v for k, v in kw.items() if k in sig.parameters})
def inp(shape): 
    sig = inspect.signature(nir.Input)
    return nir.Input(input_type=np.array(shape)) if 'input_type' in sig.parameters else nir.Input(shape=np.array(shape))
def outp(shape):
    sig = inspect.signature(nir.Output)
    return nir.Output(output_type=np.array(shape)) if 'output_type' in sig.parameters else nir.Output(shape=np.array(shape))
n_in, n_h, n_o = 6, 5, 3
W1 = rng.normal(size=(n_h, n_in)) * 4; b1 = rng.normal(size=n_h) * 0.1
W2 = rng.normal(size=(n_o, n_h)) * 4; b2 = np.zeros(n_o)
nodes = {
  "input": inp([n_in]),
  "fc1": nir.Affine(weight=W1, bias=b1),
  "lif1": mk(nir.LIF, tau=np.full(n_h, 5.0), r=np.ones(n_h), v_leak=np.zeros(n_h), v_threshold=np.ones(n_h), v_reset=np.zeros(n_h)),
  "rec": nir.Affine(weight=rng.normal(size=(n_h, n_h)) * 0.3, bias=np.full(n_h, 0.05)),
  "fc2": nir.Affine(weight=W2, bias=b2),
  "cuba": mk(nir.CubaLIF, tau_syn=np.full(n_o, 4.0), tau_mem=np.full(n_o, 8.0), r=np.ones(n_o), v_leak=np.zeros(n_o), v_threshold=np.ones(n_o), w_in=np.ones(n_o), v_reset=np.zeros(n_o)),
  "output": outp([n_o]),
}
edges = [("input","fc1"),("fc1","lif1"),("lif1","rec"),("rec","lif1"),("lif1","fc2"),("fc2","cuba"),("cuba","output")]
g = nir.NIRGraph(nodes=nodes, edges=edges)
nir.write(out + "/rnn.nir", g)
# conv + sumpool/flatten + IF + LI readout
C = rng.normal(size=(2, 1, 3, 3))
cnodes = {"input": inp([1, 6, 6]),
  "conv": mk(nir.Conv2d, weight=C, bias=np.zeros(2), stride=1, padding=1, dilation=1, groups=1, input_shape=(6, 6)),
  "if1": nir.IF(r=np.ones((2, 6, 6)), v_threshold=np.ones((2, 6, 6))),
  "flat": mk(nir.Flatten, start_dim=0, end_dim=-1, input_type={"input": np.array([2, 6, 6])}),
  "fc": nir.Affine(weight=rng.normal(size=(3, 72)) * 0.3, bias=np.zeros(3)),
  "li": nir.LI(tau=np.full(3, 2.0), r=np.ones(3), v_leak=np.zeros(3)),
  "output": outp([3])}
cedges = [("input","conv"),("conv","if1"),("if1","flat"),("flat","fc"),("fc","li"),("li","output")]
try:
    g2 = nir.NIRGraph(nodes=cnodes, edges=cedges)
    nir.write(out + "/conv.nir", g2)
except Exception as e:
    print("conv failed", type(e).__name__, e)
print("wrote", out, "with nir", getattr(nir, '__version__', '?'))
