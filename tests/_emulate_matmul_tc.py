"""A randomly interleaved model of csrc/matmul_sm90.cu's mbarrier protocol (used by
tests/test_matmul_tc.py::test_wgmma_pipeline_protocol).

The host emulation (tests/_emulate_cuda.py) runs the kernel's own source, in two schedules. This
model explores many: producer, consumers and TMA landings advance in a random order, 30 seeds per
tile count, checking the protocol itself (parities, the one-behind release, the release at the end
of each tile a persistent CTA needs). It used to share this file with lane-level NumPy
transliterations of matmul_mma and matmul_wgmma, retired on 2026-11-30 for the host emulation.
"""

from __future__ import annotations

import numpy as np


# ------------------------------------------------------------------------------------------------
# matmul_wgmma's mbarrier protocol, as a randomly scheduled discrete-event model: the producer, the
# two consumers and the TMA landings interleave in a random order; the model checks that nothing
# deadlocks, that a consumer always finds the k-block it expects in its stage, and that TMA never
# overwrites a stage a consumer's wgmma may still be reading (released only after the NEXT
# k-block's wgmma_wait<1>, or at the end of the tile).
# ------------------------------------------------------------------------------------------------

class _Bar:
    """mbarrier: `count` arrivals plus a transaction count complete a phase;
    try_wait.parity(P) is true when the phase of parity P has completed, i.e. the current
    (incomplete) phase's parity differs from P."""

    def __init__(self, count: int):
        self.count, self.pending, self.tx, self.completed = count, count, 0, 0

    def _check(self):
        if self.pending == 0 and self.tx == 0:
            self.completed += 1
            self.pending = self.count

    def arrive(self, expect_tx: int = 0):
        self.tx += expect_tx
        self.pending -= 1
        self._check()

    def complete_tx(self, n: int):
        self.tx -= n
        self._check()

    def passes(self, parity: int) -> bool:
        return self.completed % 2 != parity


def simulate_wgmma_pipeline(n_tiles: int, KT: int, STAGES: int = 4, consumers: int = 2, seed: int = 0):
    """Run the protocol of csrc/matmul_sm90.cu for one CTA that owns n_tiles tiles of KT k-blocks."""
    rng = np.random.default_rng(seed)
    full = [_Bar(1) for _ in range(STAGES)]
    empty = [_Bar(consumers) for _ in range(STAGES)]
    slot = [None] * STAGES                 # which k-block (it) a stage holds
    in_use = [set() for _ in range(consumers)]
    landings = []                          # TMA loads in flight: (stage, it)
    BYTES = 1

    def producer():
        it = 0
        for _ in range(n_tiles):
            for _ in range(KT):
                s = it % STAGES
                yield (empty[s], ((it // STAGES) & 1) ^ 1)
                full[s].arrive(expect_tx=BYTES)
                landings.append((s, it))
                it += 1

    def consumer(c):
        it = 0
        for _ in range(n_tiles):
            for kt in range(KT):
                s = it % STAGES
                yield (full[s], (it // STAGES) & 1)
                assert slot[s] == it, f"consumer {c} at k-block {it} found {slot[s]} in stage {s}"
                in_use[c].add(s)
                if kt > 0:
                    in_use[c].discard((it - 1) % STAGES)
                    empty[(it - 1) % STAGES].arrive()
                it += 1
            in_use[c].discard((it - 1) % STAGES)
            empty[(it - 1) % STAGES].arrive()

    agents = {"producer": producer(), **{f"consumer{c}": consumer(c) for c in range(consumers)}}
    waiting = {name: None for name in agents}  # the (barrier, parity) each agent is blocked on
    done = set()
    while len(done) < len(agents) or landings:
        runnable = [n for n in agents if n not in done and (waiting[n] is None or waiting[n][0].passes(waiting[n][1]))]
        choices = runnable + (["tma"] if landings else [])
        assert choices, f"deadlock: {waiting}"
        pick = choices[rng.integers(len(choices))]
        if pick == "tma":
            s, it = landings.pop(rng.integers(len(landings)))
            assert not any(s in u for u in in_use), f"TMA overwrote stage {s} while a consumer reads it"
            slot[s] = it
            full[s].complete_tx(BYTES)
            continue
        try:
            waiting[pick] = next(agents[pick])
        except StopIteration:
            done.add(pick)
            waiting[pick] = None
    return True
