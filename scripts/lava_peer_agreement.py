"""Agreement of the Loihi backends with each library's own output on the peer corpus.

    PYTHONPATH=. python scripts/lava_peer_agreement.py [--no-lava] [--json OUT.json] [CASE ...]

For every case of tests/data/peers (LIB/CASE, read with the profile its meta.json names),
runs eventsim, lava-float, lava-fixed and loihi-fixed through ``run_graph`` and prints one
markdown row per case: how it runs on the Loihi backends ("exact" lowering, "approx." with
``--allow-reset-to-zero`` and what that changes, or the refusal), and the fraction of output
entries (T x batch x outputs) that agree with the library's output and with eventsim's.
Agreement: spike outputs equal; membrane outputs (LI readouts) within the float32 bound of
tests/conformance/cases.membrane_tolerance against the library, 1e-9 * (1 + |y|) against
eventsim, plus in fixed point the quantisation bound cases.fixed_membrane_bound. The last
column says whether loihi-fixed equals lava-fixed bit for bit (outputs
and every population's spikes).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikebridge.base.errors import InputError  # noqa: E402
from spikebridge.hardware.backends import RunOptions, run_graph  # noqa: E402
from spikebridge.hardware.graph import load_graph  # noqa: E402
from tests.conformance.cases import (PEER_CASES, PEERS, fixed_membrane_bound, membrane_tolerance,  # noqa: E402
                                     peer_meta, peer_profile)


def agree(out, want, atol: float | None) -> float:
    out = np.asarray(out, dtype=np.float64).reshape(want.shape)
    if atol is None:
        return float(np.mean(out == want))
    return float(np.mean(np.abs(out - want) <= atol))


def run(g, x, backend, prof):
    """(trace, how): how = 'exact' or 'approx.'; (None, reason) when refused."""
    for allow in (False, True):
        try:
            return run_graph(g, x, backend, RunOptions(profile=prof, allow_reset_to_zero=allow)), \
                ("approx." if allow else "exact")
        except InputError as e:
            reason = e.rule if hasattr(e, "rule") else str(e)
            if allow:
                return None, reason
    return None, "?"


def measure(case: str, lava: bool = True) -> dict:
    d = PEERS / case
    g, x, y = load_graph(d / "graph.nir"), np.load(d / "input.npy"), np.load(d / "expected.npy")
    prof = peer_profile(case)
    membrane = peer_meta(case).get("output") == "membrane"
    lib_tol = membrane_tolerance(g, y) if membrane else None
    ev = run_graph(g, x, "eventsim", RunOptions(profile=prof))
    e = np.asarray(next(iter(ev.outputs.values()))).reshape(y.shape)
    row = {"case": case, "profile": prof, "output": "membrane" if membrane else "spikes",
           "eventsim_lib": agree(e, y, lib_tol)}
    backends = ("loihi-fixed", "lava-float", "lava-fixed") if lava else ("loihi-fixed",)
    traces = {}
    for b in backends:
        tr, how = run(g, x, b, prof)
        traces[b] = tr
        if tr is None:
            row[b] = {"runs": "refused", "reason": how}
            continue
        o = next(iter(tr.outputs.values()))
        ev_tol = None if not membrane else float(1e-9 * (1 + np.abs(e).max()))
        lt = lib_tol
        if membrane and b != "lava-float":  # fixed point: the quantisation bound of the readout
            q = fixed_membrane_bound(tr, y.shape[0])
            lt, ev_tol = lib_tol + q, ev_tol + q
        row[b] = {"runs": how, "lib": agree(o, y, lt), "eventsim": agree(o, e, ev_tol),
                  "approximation": tr.meta.get("approximation"),
                  "max_abs_diff_lib": float(np.max(np.abs(np.asarray(o).reshape(y.shape) - y)))}
    a, b = traces.get("loihi-fixed"), traces.get("lava-fixed")
    if a is not None and b is not None:
        same = all(np.array_equal(a.outputs[k], b.outputs[k]) for k in a.outputs) and \
            all(np.array_equal(np.asarray(a.spikes[k]), np.asarray(b.spikes[k])) for k in a.spikes)
        row["fixed_bit_exact"] = bool(same)
    return row


def _cell(r: dict) -> str:
    if r["runs"] == "refused":
        return "refused"
    return f"{100 * r['lib']:.1f} / {100 * r['eventsim']:.1f}"


def table(rows: list[dict]) -> str:
    out = ["| case (profile) | output | Loihi lowering | eventsim vs lib | lava-float lib / eventsim % | "
           "lava-fixed lib / eventsim % | loihi-fixed = lava-fixed |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        f, q = r.get("lava-float", r["loihi-fixed"]), r.get("lava-fixed", r["loihi-fixed"])
        how = f["runs"] if f["runs"] != "refused" else "refused: " + f["reason"].split(";")[0][:90]
        if f["runs"] == "approx.":
            how = "approx.: " + (f["approximation"] or "").replace(" (allow_reset_to_zero=True)", "")
        if f["runs"] != "refused" and q["runs"] == "refused":
            how += " (fixed point refused: membrane readout)" if "membrane" in q["reason"] else \
                f" (fixed point refused: {q['reason'][:60]})"
        bit = {True: "yes", False: "NO"}.get(r.get("fixed_bit_exact"), "-")
        out.append(f"| {r['case']} (`{r['profile']}`) | {r['output']} | {how} | {100 * r['eventsim_lib']:.1f} | "
                   f"{_cell(f)} | {_cell(q)} | {bit} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", help="LIB/CASE (default: all)")
    ap.add_argument("--no-lava", action="store_true", help="integer model only (no Lava worker)")
    ap.add_argument("--json", help="also write the rows as JSON")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    rows = [measure(c, lava=not a.no_lava) for c in (a.cases or PEER_CASES)]
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
